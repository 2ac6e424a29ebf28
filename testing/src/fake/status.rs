//! API errors as `metav1.Status`.
//!
//! Every failure the fake server reports goes through [`ApiError`], so clients always receive a
//! `Status` object with the HTTP code and `reason` a real apiserver would use; `kube::Client` turns
//! these into `kube::Error::Api` with the same fields.

use serde_json::{Value, json};

/// A failed API request, rendered as a `metav1.Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human readable message.
    pub message: String,
    /// `details.name`, `details.group`, `details.kind` when known.
    pub details: Option<Box<(String, String, String)>>,
    /// `details.retryAfterSeconds`, also sent as the `Retry-After` header (a 429).
    pub retry_after_seconds: Option<u32>,
    /// `details.causes`: which fields a 422 `Invalid` refused, and why.
    pub causes: Vec<StatusCause>,
}

/// One entry of `details.causes` (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// What is wrong, after the field ("Required value", "Invalid value: \"x\": why").
    pub message: String,
    /// The field's path (`spec.containers[0].image`).
    pub field: String,
}

impl ApiError {
    /// A new error with a code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
            causes: Vec::new(),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for a named object of a resource.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let mut e = Self::new(404, "NotFound", format!("{gr} \"{name}\" not found"));
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            plural.to_string(),
        )));
        e
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{gr} \"{name}\" already exists"),
        );
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            plural.to_string(),
        )));
        e
    }

    /// 409 Conflict for a stale resourceVersion or failed precondition.
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} \"{name}\": {why}"),
        );
        e.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            plural.to_string(),
        )));
        e
    }

    /// 422 Invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// A `shardSelector` kube-apiserver cannot parse. Its registry returns a plain error, which
    /// the handler answers as a 500 with no reason (`StatusReasonUnknown`).
    pub fn invalid_shard_selector(why: &str) -> Self {
        Self::new(500, "", format!("invalid shard selector: {why}"))
    }

    /// 410 Expired (resourceVersion or continue token too old).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// The `metav1.Status` JSON body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty() {
            // kube-apiserver's answer to some internal errors carries no reason.
            if let Some(m) = s.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some((name, group, kind)) = self.details.as_deref() {
            s["details"] = json!({ "name": name, "kind": kind });
            if !group.is_empty() {
                s["details"]["group"] = json!(group);
            }
        }
        if !self.causes.is_empty() {
            if !s["details"].is_object() {
                s["details"] = json!({});
            }
            s["details"]["causes"] = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
        }
        if let Some(secs) = self.retry_after_seconds {
            if !s["details"].is_object() {
                s["details"] = json!({});
            }
            s["details"]["retryAfterSeconds"] = json!(secs);
        }
        s
    }
}
