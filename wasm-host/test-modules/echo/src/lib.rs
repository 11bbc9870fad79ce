//! `echo`: a test filter for the Gatewarden wasm host.
//!
//! Every behaviour is triggered by a request header so that one module can exercise every host
//! feature. It is test code: it uses the SDK's helpers (some of which panic on unexpected host
//! statuses) on purpose, and `x-panic` panics deliberately.
//!
//! Plugin configuration: any UTF-8 text is the "tag" echoed in `x-echo-config`; the text `bad` is
//! refused (`on_configure` returns false).
//!
//! Request headers understood:
//! - `x-remove-me`: removed before the request goes upstream.
//! - `x-deny: <status>`: answered locally with that status, header `x-denied-by: echo`, body `denied`.
//! - `x-panic`: the filter panics (the VM traps).
//! - `x-shared-set: <key>=<value>` with optional `x-cas: <n>`: sets shared data; the result
//!   (`ok`, `cas_mismatch`) goes upstream in `x-shared-result`.
//! - `x-shared-get: <key>`: adds `x-shared-value` and `x-shared-cas` (or `x-shared-value: <none>`).
//! - `x-callout: <upstream>`: dispatches `GET /lookup` to that upstream and pauses; the response's
//!   status and body are added as `x-callout-status` / `x-callout-body` (`failed` when the call
//!   failed), then the request resumes. A refused dispatch adds `x-callout-error`.
//! - `x-upper-body`: the request body is replaced by its upper-case version.
//! - `x-enqueue: <item>`: enqueues the item on queue `echo_queue` (registered by the root when
//!   the configuration is `queue`); the result goes upstream in `x-enqueue-result`. The root logs
//!   `queue item: <item>` when the queue is ready.
//! - `x-log-level`: adds `x-host-log-level` with the level reported by the host.
//!
//! Always added upstream: `x-echo-config`, `x-echo-generation` (count of `on_configure` calls in
//! this VM, a static that survives reconfiguration), `x-source-address`, `x-request-id-seen`,
//! `x-plugin-name`, `x-now-ms`. Response headers get `x-echo-response: 1`.
//! Metrics: counter `echo_requests`, counter `echo_ticks`, gauge `echo_last_status`,
//! histogram `echo_body_size`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

static CONFIGURE_COUNT: AtomicU32 = AtomicU32::new(0);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EchoRoot::default()) });
}}

#[derive(Clone, Copy, Default)]
struct Metrics {
    requests: u32,
    ticks: u32,
    last_status: u32,
    body_size: u32,
}

#[derive(Default)]
struct EchoRoot {
    settings: Option<Rc<Settings>>,
}

struct Settings {
    tag: String,
    generation: u32,
    metrics: Metrics,
}

impl Context for EchoRoot {}

impl RootContext for EchoRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        log::info!("vm start: {}", String::from_utf8_lossy(&vm_config));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let tag = String::from_utf8_lossy(&raw).into_owned();
        if tag == "bad" {
            log::error!("config: refused \"bad\"");
            return false;
        }
        let generation = CONFIGURE_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        let metrics = Metrics {
            requests: define(MetricType::Counter, "echo_requests"),
            ticks: define(MetricType::Counter, "echo_ticks"),
            last_status: define(MetricType::Gauge, "echo_last_status"),
            body_size: define(MetricType::Histogram, "echo_body_size"),
        };
        if tag == "queue" {
            // The SDK helper panics on any status but Ok: on Kong (no queues) this traps.
            let queue = hostcalls::register_shared_queue("echo_queue").unwrap_or(0);
            log::info!("registered queue {queue}");
        }
        self.set_tick_period(Duration::from_millis(1000));
        log::info!("configured tag={tag} generation={generation}");
        self.settings = Some(Rc::new(Settings { tag, generation, metrics }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(settings) = &self.settings {
            let _ = hostcalls::increment_metric(settings.metrics.ticks, 1);
            log::debug!("tick");
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            log::info!("queue item: {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let settings = self.settings.clone()?;
        Some(Box::new(EchoHttp { settings }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn define(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(0)
}

struct EchoHttp {
    settings: Rc<Settings>,
}

impl EchoHttp {
    fn property_or_none(&self, path: Vec<&str>) -> String {
        match self.get_property(path) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => "<none>".to_string(),
        }
    }
}

impl Context for EchoHttp {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _t: usize) {
        if num_headers == 0 {
            self.add_http_request_header("x-callout-status", "failed");
        } else {
            let status = self.get_http_call_response_header(":status").unwrap_or_default();
            self.add_http_request_header("x-callout-status", &status);
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            self.add_http_request_header("x-callout-body", &String::from_utf8_lossy(&body));
        }
        self.resume_http_request();
    }
}

impl HttpContext for EchoHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::increment_metric(self.settings.metrics.requests, 1);
        if self.get_http_request_header("x-panic").is_some() {
            panic!("x-panic requested");
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log::info!("request path={path}");
        self.set_http_request_header("x-remove-me", None);
        self.add_http_request_header("x-echo-config", &self.settings.tag.clone());
        let generation = self.settings.generation.to_string();
        self.add_http_request_header("x-echo-generation", &generation);
        for (header, path) in [
            ("x-source-address", vec!["source", "address"]),
            ("x-request-id-seen", vec!["request", "id"]),
            ("x-plugin-name", vec!["plugin_name"]),
        ] {
            let value = self.property_or_none(path);
            self.add_http_request_header(header, &value);
        }
        let now = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.add_http_request_header("x-now-ms", &now.as_millis().to_string());

        if self.get_http_request_header("x-log-level").is_some() {
            let level = match hostcalls::get_log_level() {
                Ok(level) => format!("{level:?}"),
                Err(status) => format!("error {status:?}"),
            };
            self.add_http_request_header("x-host-log-level", &level);
        }
        if let Some(entry) = self.get_http_request_header("x-shared-set") {
            let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            let cas = self.get_http_request_header("x-cas").and_then(|c| c.parse::<u32>().ok()).filter(|c| *c != 0);
            let result = match hostcalls::set_shared_data(key, Some(value.as_bytes()), cas) {
                Ok(()) => "ok",
                Err(Status::CasMismatch) => "cas_mismatch",
                Err(_) => "error",
            };
            self.add_http_request_header("x-shared-result", result);
        }
        if let Some(key) = self.get_http_request_header("x-shared-get") {
            match self.get_shared_data(&key) {
                (Some(value), cas) => {
                    self.add_http_request_header("x-shared-value", &String::from_utf8_lossy(&value));
                    self.add_http_request_header("x-shared-cas", &cas.unwrap_or(0).to_string());
                }
                (None, _) => self.add_http_request_header("x-shared-value", "<none>"),
            }
        }
        if let Some(item) = self.get_http_request_header("x-enqueue") {
            let result = match hostcalls::resolve_shared_queue("", "echo_queue") {
                Ok(Some(queue)) => match hostcalls::enqueue_shared_queue(queue, Some(item.as_bytes())) {
                    Ok(()) => "ok".to_string(),
                    Err(status) => format!("{status:?}"),
                },
                Ok(None) => "no_queue".to_string(),
                Err(status) => format!("{status:?}"),
            };
            self.add_http_request_header("x-enqueue-result", &result);
        }
        if let Some(status) = self.get_http_request_header("x-deny") {
            let status = status.parse().unwrap_or(403);
            log::warn!("denying with {status}");
            self.send_http_response(status, vec![("x-denied-by", "echo")], Some(b"denied"));
            return Action::Pause;
        }
        if let Some(upstream) = self.get_http_request_header("x-callout") {
            let headers = vec![(":method", "GET"), (":path", "/lookup"), (":authority", "lookup")];
            match self.dispatch_http_call(&upstream, headers, Some(b"q"), vec![], Duration::from_millis(1500)) {
                Ok(_) => return Action::Pause,
                Err(status) => self.add_http_request_header("x-callout-error", &format!("{status:?}")),
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = hostcalls::record_metric(self.settings.metrics.body_size, body_size as u64);
        if self.get_http_request_header("x-upper-body").is_some() {
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let _ = hostcalls::record_metric(self.settings.metrics.last_status, status.parse().unwrap_or(0));
        self.add_http_response_header("x-echo-response", "1");
        Action::Continue
    }

    fn on_log(&mut self) {
        log::info!("log phase");
    }
}
