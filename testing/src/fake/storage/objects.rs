//! What the storage does to an object's JSON: server-set metadata (uid, timestamps), the spec
//! part that decides generation, create-time defaults, finalizers.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::fake::resources::ResourceDef;
use crate::fake::status::ApiError;

/// RFC 3339 UTC timestamp with second precision.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn new_uid() -> String {
    let x: u128 = rand::random();
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Everything but metadata and status, to decide generation bumps.
pub(super) fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// The defaults kube-apiserver fills in on create that clients read back: a namespace is
/// `Active` with the `kubernetes` finalizer, a secret without a type is `Opaque`.
pub(super) fn apply_create_defaults(d: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    match (d.group.as_str(), d.plural.as_str()) {
        ("", "namespaces") => {
            for field in ["spec", "status"] {
                if !obj.get(field).is_none_or(Value::is_object) {
                    return Err(ApiError::bad_request(format!(
                        "{field} of the namespace is not a JSON object"
                    )));
                }
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            obj["status"]["phase"] = json!("Active");
        }
        ("", "secrets")
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            obj["type"] = json!("Opaque");
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
}
