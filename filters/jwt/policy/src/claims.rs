//! Checks of the registered claims (RFC 7519 §4.1) and the rule's claim requirements.
//!
//! Time is injected (`now`, Unix seconds); nothing here reads a clock. With a skew `s`:
//! - expired iff `now >= exp + s` (RFC 7519: `exp` is the time on or after which the token
//!   must not be accepted);
//! - not yet valid iff `now + s < nbf` or `now + s < iat` (a token issued in the future);
//! - lifetime: `exp - iat` (or `exp - now` without `iat`) must not exceed the maximum.
//!
//! NumericDates are JSON numbers (fractions are floored); anything else is a type error, as is
//! a non-string `iss`, `sub`, `jti`, or an `aud` that is neither a string nor an array of strings.

use serde_json::{Map, Value};

use super::reason::JwtReason;

/// A provider's claim checks, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ClaimChecks {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub subjects: Option<Subjects>,
    pub skew: i64,
    pub require_expiration: bool,
    pub max_lifetime: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) enum Subjects {
    List(Vec<String>),
    Prefix(String),
}

/// The token's `iss` if it is a string; a present non-string is a type error.
pub(crate) fn issuer(claims: &Map<String, Value>) -> Result<Option<&str>, JwtReason> {
    match claims.get("iss") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwtReason::ClaimType),
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n.as_u64().is_some() {
                Ok(Some(i64::MAX))
            } else {
                // `as` saturates for floats; NaN cannot come from JSON.
                Ok(n.as_f64().map(|f| f.floor() as i64))
            }
        }
        Some(_) => Err(JwtReason::ClaimType),
    }
}

/// The `exp` claim (for the token cache), assuming [`ClaimChecks::check`] passed.
pub(crate) fn expiration(claims: &Map<String, Value>) -> Option<i64> {
    numeric_date(claims, "exp").ok().flatten()
}

impl ClaimChecks {
    /// Every registered-claim check, in the order: types, issuer, time, audience, subject.
    pub fn check(&self, claims: &Map<String, Value>, now: i64) -> Result<(), JwtReason> {
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        let iat = numeric_date(claims, "iat")?;
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(JwtReason::ClaimType),
        };
        if claims.get("jti").is_some_and(|j| !j.is_string()) {
            return Err(JwtReason::ClaimType);
        }
        let aud: Vec<&str> = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for a in list {
                    out.push(a.as_str().ok_or(JwtReason::ClaimType)?);
                }
                out
            }
            Some(_) => return Err(JwtReason::ClaimType),
        };
        if issuer(claims)? != Some(self.issuer.as_str()) {
            return Err(JwtReason::Issuer);
        }

        let late = now.saturating_add(self.skew);
        match exp {
            Some(exp) if now >= exp.saturating_add(self.skew) => return Err(JwtReason::Expired),
            None if self.require_expiration => return Err(JwtReason::NoExpiration),
            _ => {}
        }
        if nbf.is_some_and(|nbf| late < nbf) || iat.is_some_and(|iat| late < iat) {
            return Err(JwtReason::NotYetValid);
        }
        if let (Some(max), Some(exp)) = (self.max_lifetime, exp) {
            let lifetime = exp.saturating_sub(iat.unwrap_or(now));
            if lifetime > max {
                return Err(JwtReason::LifetimeTooLong);
            }
        }

        if !self.audiences.is_empty() && !aud.iter().any(|a| self.audiences.iter().any(|w| w == a)) {
            return Err(JwtReason::Audience);
        }
        match (&self.subjects, sub) {
            (None, _) => {}
            (Some(_), None) => return Err(JwtReason::Subject),
            (Some(Subjects::List(list)), Some(s)) if !list.iter().any(|w| w == s) => return Err(JwtReason::Subject),
            (Some(Subjects::Prefix(p)), Some(s)) if !s.starts_with(p.as_str()) => return Err(JwtReason::Subject),
            _ => {}
        }
        Ok(())
    }
}

/// The value at a dot-separated claim path (`realm_access.roles`).
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// Whether the token grants every one of `required`: scopes come from `scope` (space-separated)
/// and `scp` (array of strings, or space-separated string). Other types grant nothing.
pub(crate) fn has_scopes(claims: &Map<String, Value>, required: &[String]) -> bool {
    let mut granted: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
            Some(Value::Array(a)) => granted.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    required.iter().all(|r| granted.contains(&r.as_str()))
}

/// Whether a claim value equals `want`: a string equal to it, a number or boolean whose JSON
/// text equals it, or an array with such an element.
pub(crate) fn value_equals(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => want == if *b { "true" } else { "false" },
        Value::Array(a) => a.iter().any(|e| !e.is_array() && value_equals(e, want)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checks() -> ClaimChecks {
        ClaimChecks {
            issuer: "https://idp".into(),
            audiences: vec!["api".into()],
            subjects: None,
            skew: 60,
            require_expiration: true,
            max_lifetime: Some(3600),
        }
    }

    fn run(c: &ClaimChecks, claims: Value, now: i64) -> Result<(), JwtReason> {
        c.check(claims.as_object().unwrap(), now)
    }

    #[test]
    fn time_boundaries_with_skew() {
        let c = checks();
        let base = json!({"iss": "https://idp", "aud": "api"});
        let with = |extra: Value| {
            let mut m = base.as_object().unwrap().clone();
            m.extend(extra.as_object().unwrap().clone());
            Value::Object(m)
        };
        // exp = 1000: accepted while now < 1060.
        assert_eq!(run(&c, with(json!({"exp": 1000})), 1059), Ok(()));
        assert_eq!(run(&c, with(json!({"exp": 1000})), 1060), Err(JwtReason::Expired));
        // nbf = 1000: accepted from now = 940.
        assert_eq!(run(&c, with(json!({"exp": 2000, "nbf": 1000})), 940), Ok(()));
        assert_eq!(run(&c, with(json!({"exp": 2000, "nbf": 1000})), 939), Err(JwtReason::NotYetValid));
        assert_eq!(run(&c, with(json!({"exp": 2000, "iat": 1000})), 939), Err(JwtReason::NotYetValid));
        assert_eq!(run(&c, with(json!({"exp": 1000.9})), 1059), Ok(()));
        assert_eq!(run(&c, with(json!({})), 0), Err(JwtReason::NoExpiration));
        // Lifetime: exp - iat, else exp - now.
        assert_eq!(run(&c, with(json!({"exp": 4600, "iat": 1000})), 1000), Ok(()));
        assert_eq!(run(&c, with(json!({"exp": 4601, "iat": 1000})), 1000), Err(JwtReason::LifetimeTooLong));
        assert_eq!(run(&c, with(json!({"exp": 4601})), 1000), Err(JwtReason::LifetimeTooLong));
        assert_eq!(run(&c, with(json!({"exp": 4600})), 1000), Ok(()));
        assert_eq!(run(&c, with(json!({"exp": u64::MAX})), 1000), Err(JwtReason::LifetimeTooLong));
        assert_eq!(run(&c, with(json!({"exp": -5})), 54), Ok(()));
        assert_eq!(run(&c, with(json!({"exp": -5})), 55), Err(JwtReason::Expired));
    }

    #[test]
    fn wrong_claim_types_are_rejected() {
        let c = checks();
        for bad in [
            json!({"iss": "https://idp", "aud": "api", "exp": "2000"}),
            json!({"iss": "https://idp", "aud": "api", "exp": 2000, "nbf": "1"}),
            json!({"iss": "https://idp", "aud": "api", "exp": 2000, "iat": true}),
            json!({"iss": "https://idp", "aud": "api", "exp": null}),
            json!({"iss": ["https://idp"], "aud": "api", "exp": 2000}),
            json!({"iss": "https://idp", "aud": 5, "exp": 2000}),
            json!({"iss": "https://idp", "aud": ["api", 5], "exp": 2000}),
            json!({"iss": "https://idp", "aud": "api", "exp": 2000, "sub": 7}),
            json!({"iss": "https://idp", "aud": "api", "exp": 2000, "jti": {}}),
        ] {
            assert_eq!(run(&c, bad.clone(), 1000), Err(JwtReason::ClaimType), "{bad}");
        }
    }

    #[test]
    fn issuer_audience_subject() {
        let mut c = checks();
        assert_eq!(run(&c, json!({"iss": "https://other", "aud": "api", "exp": 2000}), 1000), Err(JwtReason::Issuer));
        assert_eq!(run(&c, json!({"aud": "api", "exp": 2000}), 1000), Err(JwtReason::Issuer));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": ["x", "api"], "exp": 2000}), 1000), Ok(()));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": ["x"], "exp": 2000}), 1000), Err(JwtReason::Audience));
        assert_eq!(run(&c, json!({"iss": "https://idp", "exp": 2000}), 1000), Err(JwtReason::Audience));
        c.subjects = Some(Subjects::Prefix("svc-".into()));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": "api", "exp": 2000, "sub": "svc-a"}), 1000), Ok(()));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": "api", "exp": 2000, "sub": "usr-a"}), 1000), Err(JwtReason::Subject));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": "api", "exp": 2000}), 1000), Err(JwtReason::Subject));
        c.subjects = Some(Subjects::List(vec!["a".into()]));
        assert_eq!(run(&c, json!({"iss": "https://idp", "aud": "api", "exp": 2000, "sub": "a"}), 1000), Ok(()));
    }

    #[test]
    fn scopes_and_claim_values() {
        let claims = json!({"scope": "read  write", "scp": ["admin"], "n": {"t": "acme", "k": 5, "b": true, "l": ["x", "y"]}});
        let m = claims.as_object().unwrap();
        assert!(has_scopes(m, &["read".into(), "admin".into()]));
        assert!(!has_scopes(m, &["delete".into()]));
        assert_eq!(lookup(m, "n.t"), Some(&json!("acme")));
        assert_eq!(lookup(m, "n.t.x"), None);
        assert!(value_equals(lookup(m, "n.k").unwrap(), "5"));
        assert!(value_equals(lookup(m, "n.b").unwrap(), "true"));
        assert!(value_equals(lookup(m, "n.l").unwrap(), "y"));
        assert!(!value_equals(lookup(m, "n").unwrap(), "acme"));
    }
}
