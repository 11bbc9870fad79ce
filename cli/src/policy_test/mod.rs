//! Policy tests: test files (`file.rs`), comparing a case's outcome with its expectation
//! (`compare.rs`), the reports of a run as text (`report.rs`) and JUnit XML (`junit.rs`). The
//! command that runs them is `commands/test.rs`; a request runs through a module in `run.rs`.
//!
//!
//! A test file (`*.test.yaml`, `*.test.yml` or `*.test.json`) names one policy and lists cases:
//!
//! ```yaml
//! policy: ../policies/ip_geo.yaml      # relative to this file; validated first, as `validate` does
//! profile: envoy                       # or kong (default envoy)
//! time: 2026-01-01T00:00:00Z           # the host's clock (default 2026-01-01T00:00:00Z); a case may override
//! fixtures:                            # answers to the filter's dispatch_http_call, by upstream + path
//!   - { upstream: gatewarden_geo_db, path: /country.mmdb, file: ../fixtures/country.mmdb }
//!   - { upstream: jwks, path: /jwks.json, status: 503 }    # or `fail: true`, or `body: "..."`
//! cases:
//!   - name: office network reaches /admin
//!     request: { method: GET, path: /admin, peer: 10.1.2.3, headers: { x-forwarded-for: 10.1.2.3 },
//!                body: "...", time: 2030-01-01T00:00:00Z }
//!     # body: text, or YAML sent as its JSON ({ name: Rex }); or body_size: N (N bytes of `x`).
//!     # A body gets a content-length unless headers has content-length or transfer-encoding;
//!     # body_chunk_size: Envoy's chunks (default 1024); body_spilled: true (Kong: nginx spilled it)
//!     expect:
//!       status: 200
//!       decision: allow                 # allow | deny | dry_run_deny | error
//!       rule: admin-office-only
//!       reason: ip_denied               # from the decision log line (denials)
//!       upstream_headers: { x-user: user-1, authorization: null }   # null: not received
//!       response_headers: { www-authenticate: 'Bearer realm="api"' }
//!       body: '{"error":"forbidden","message":"access denied by policy"}'
//!   - name: the eleventh request in one second is limited      # a rate limit: several requests
//!     request: { path: /api, peer: 192.0.2.7 }
//!     repeat: 11                        # sent 11 times through one VM (state carries over)
//!     every_ms: 0                       # the clock advances this much before each later request
//!     expect:
//!       allowed: 10                     # how many reached the upstream ...
//!       denied: 1                       # ... and how many the filter answered
//!       status: 429                     # every other field: the last request
//! ```

pub mod compare;
pub mod file;
pub mod junit;
pub mod report;
