//! HTTP routing: maps Kubernetes REST paths and query parameters onto the storage.
//!
//! Paths are parsed by hand (`/api/v1/...`, `/apis/{g}/{v}/...`, optional `watch/`, optional
//! `namespaces/{ns}/`), so any registered resource, including CRD-defined ones, is served by the
//! same code without per-kind routes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::decode::{self, FieldValidation};
use super::faults::Faults;
use super::managed;
use super::media::{Output, Shape, negotiate};
use super::patch::{json_patch, merge_patch, strategic_merge_patch};
use super::resources::{ResKey, ResourceDef, api_group, groups, resource_list};
use super::selectors::{FieldSelector, LabelSelector, Selectors};
use super::shard::ShardSelector;
use super::status::ApiError;
use super::storage::{Storage, WatchFrom};
use super::watch::{WatchOptions, stream};

/// Response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// Shared server state.
pub struct Shared {
    /// Storage.
    pub storage: Mutex<Storage>,
    /// Faults.
    pub faults: Faults,
    /// Bookmark interval.
    pub bookmark_interval: Duration,
    /// The largest request body accepted, in bytes.
    pub max_request_body_bytes: usize,
    /// Responses at least this large are gzip-compressed for clients that accept it.
    pub gzip_min_bytes: Option<usize>,
    /// Streaming-list watches are gzip-compressed, one member per event.
    pub gzip_watch_lists: bool,
    /// `shardSelector` is honoured (KEP-5866's `ShardedListAndWatch`).
    pub sharded_list_and_watch: bool,
    /// KEP-5958's `drop=metadata.managedFields` is honoured.
    pub drop_managed_fields: bool,
}

/// Whether the request's `Accept-Encoding` accepts gzip (a `q=0` refuses it).
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// One gzip member holding `data`, at the speed-first level kube-apiserver uses.
fn gzip_member(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Compresses a response as kube-apiserver does for a client that accepts gzip: a body of
/// known size at least [`Shared::gzip_min_bytes`] as one member, the body of a streaming-list
/// watch (`sendInitialEvents=true`) one member per event (1.37's `WatchListCompression` ends a
/// member at each flush, after one event or a batch: per event is the worst case for a client); anything else is sent as it is. The bytes of every body, as sent, are counted.
async fn encode(
    shared: &Shared,
    headers: &http::HeaderMap,
    query: &HashMap<String, String>,
    response: Response<Body>,
) -> Response<Body> {
    use hyper::body::Body as _;
    let (mut parts, body) = response.into_parts();
    let gzip = accepts_gzip(headers) && !parts.headers.contains_key(http::header::CONTENT_ENCODING);
    let (body, compressed) = match body.size_hint().exact() {
        Some(n) if gzip && shared.gzip_min_bytes.is_some_and(|min| n >= min as u64) => {
            let full = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            (Full::new(gzip_member(&full)).boxed(), true)
        }
        None if gzip && shared.gzip_watch_lists && query_bool(query, "sendInitialEvents") => (
            body.map_frame(|frame| frame.map_data(|data| gzip_member(&data)))
                .boxed(),
            true,
        ),
        _ => (body, false),
    };
    if compressed {
        shared.faults.count_gzip_response();
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts.headers.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        parts.headers.insert(
            http::header::VARY,
            http::HeaderValue::from_static("Accept-Encoding"),
        );
    }
    let counter = shared.faults.response_bytes_counter();
    let body = match body.size_hint().exact() {
        // A body of known size keeps it (and so its Content-Length): count it whole.
        Some(n) => {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            body
        }
        None => body
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                frame
            })
            .boxed(),
    };
    Response::from_parts(parts, body)
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON response. Transformed (`as=PartialObjectMetadata`) answers are `application/json` too,
/// as kube-apiserver sends them.
fn bytes_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// One object in the negotiated representation.
fn object_response(code: u16, out: Output, obj: &Arc<Value>) -> Response<Body> {
    bytes_response(code, out.object_bytes(obj))
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(secs) = e.retry_after_seconds {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    r
}

/// Handles one request; never panics, always answers.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    shared.faults.wait_resumed().await;
    if let Some(d) = shared.faults.delay() {
        tokio::time::sleep(d).await;
    }
    let (parts, body) = req.into_parts();
    let limit = shared.max_request_body_bytes;
    let too_large = || {
        error_response(&ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        ))
    };
    // A declared length over the limit is refused before any of the body is read.
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(too_large());
    }
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Ok(too_large()),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading body: {e}"
            ))));
        }
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let accept = parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let headers = Headers {
        accept: &accept,
        content_type: &content_type,
        user_agent: &user_agent,
    };
    let response = route(
        &shared,
        &headers,
        &parts.method,
        parts.uri.path(),
        &query,
        &body,
    )
    .unwrap_or_else(|e| error_response(&e));
    Ok(encode(&shared, &parts.headers, &query, response).await)
}

/// The request headers the routes read.
struct Headers<'a> {
    accept: &'a str,
    content_type: &'a str,
    user_agent: &'a str,
}

struct Target {
    res: ResKey,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

/// An object body (or the result of a patch) must be a JSON object whose `metadata`, when
/// present, is an object too; anything else is answered 400, as kube-apiserver answers a body it
/// cannot unmarshal into the resource's type.
fn check_object_shape(obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    if !obj.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request(
            "metadata of the object is not a JSON object",
        ));
    }
    Ok(())
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The body of a create, update or delete: JSON, or the protobuf kubectl's typed commands send
/// (`kubectl create configmap`, see [`protobuf`](super::protobuf)). Other encodings answer 415, as
/// kube-apiserver does for a format it cannot read.
fn parse_object_body(content_type: &str, body: &Bytes) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode_object(body);
    }
    if !matches!(media.as_str(), "" | "application/json" | "*/*") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({media}) - accepted media types include: application/json"
            ),
        ));
    }
    parse_body(body)
}

/// The fixed endpoints: version, OpenAPI, health, and discovery (`/api`, `/apis`, a group, a
/// group version). `Ok(None)` when `segs` names none of them (a resource path).
fn discovery(
    shared: &Shared,
    accept: &str,
    segs: &[&str],
) -> Result<Option<Response<Body>>, ApiError> {
    let st = || shared.storage.lock();
    if matches!(
        segs,
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _]
    ) {
        shared.faults.count_request("discovery", &segs.join("/"));
    }
    let response = match segs {
        ["version"] => {
            let minor = st().minor;
            json_response(
                200,
                &json!({"major": "1", "minor": minor.to_string(), "gitVersion": format!("v1.{minor}.0-reflex-fake"), "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
            )
        }
        // An empty OpenAPI document: kubectl's client-side validation finds no schema for the
        // object's kind and accepts it (a 404 here makes `kubectl apply` fail). kubectl asks for
        // the gnostic protobuf form, hand-encoded here: swagger = "2.0", info {title, version}.
        ["openapi", "v2"] if accept.contains("protobuf") => {
            let mut doc = vec![0x0a, 3];
            doc.extend_from_slice(b"2.0");
            doc.extend_from_slice(&[0x12, 21, 0x0a, 10]);
            doc.extend_from_slice(b"Kubernetes");
            doc.extend_from_slice(&[0x12, 7]);
            doc.extend_from_slice(b"v1.35.0");
            let mut r = Response::new(Full::new(Bytes::from(doc)).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            r
        }
        ["openapi", "v2"] => json_response(
            200,
            &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "paths": {}, "definitions": {}}),
        ),
        ["healthz" | "readyz" | "livez"] => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            r
        }
        ["api"] => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        ["apis"] => {
            let s = st();
            let gs: Vec<Value> = groups(s.defs())
                .iter()
                .map(|(g, vs)| api_group(g, vs))
                .collect();
            json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            )
        }
        ["api", "v1"] => {
            let s = st();
            let defs: Vec<_> = s
                .defs()
                .filter(|d| d.group.is_empty() && d.version == "v1")
                .collect();
            json_response(200, &resource_list(&defs, "v1"))
        }
        ["apis", g] => {
            let s = st();
            let gs = groups(s.defs());
            let vs = gs.get(*g).ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
            json_response(200, &api_group(g, vs))
        }
        ["apis", g, v] => {
            let s = st();
            let defs: Vec<_> = s
                .defs()
                .filter(|d| d.group == *g && d.version == *v)
                .collect();
            if defs.is_empty() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            json_response(200, &resource_list(&defs, &format!("{g}/{v}")))
        }
        _ => return Ok(None),
    };
    Ok(Some(response))
}

fn route(
    shared: &Shared,
    h: &Headers<'_>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let accept = h.accept;
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(response) = discovery(shared, accept, &segs)? {
        return Ok(response);
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            let (name, sub) = match tail {
                [] => (None, None),
                [n] => (Some(n.to_string()), None),
                [n, s] => (Some(n.to_string()), Some(s.to_string())),
                _ => {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ));
                }
            };
            Target {
                res: ResKey {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.to_string(),
                },
                ns: Some(ns.to_string()),
                name,
                sub,
                watch_path,
            }
        }
        [plural, tail @ ..] => {
            let (name, sub) = match tail {
                [] => (None, None),
                [n] => (Some(n.to_string()), None),
                [n, s] => (Some(n.to_string()), Some(s.to_string())),
                _ => {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ));
                }
            };
            Target {
                res: ResKey {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.to_string(),
                },
                ns: None,
                name,
                sub,
                watch_path,
            }
        }
        [] => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    resource(shared, h, method, t, q, body)
}

fn selectors(
    shared: &Shared,
    q: &HashMap<String, String>,
    def: &ResourceDef,
) -> Result<Selectors, ApiError> {
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    fields.check_supported(&def.group, &def.plural)?;
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    // kube-apiserver reads the parameter only with the gate on (1.36+), and parses it after the
    // label and field selectors; an empty value is no selector.
    let shard = match q.get("shardSelector").filter(|s| !s.is_empty()) {
        Some(expr) if shared.sharded_list_and_watch => {
            Some(ShardSelector::parse(expr).map_err(|why| ApiError::invalid_shard_selector(&why))?)
        }
        _ => None,
    };
    Ok(Selectors {
        labels,
        fields,
        shard,
    })
}

/// A boolean query parameter as the apiserver decodes it: absent is false, and any value but
/// `0` or `false` (in any case) is true, so `watch=True` (the Python client) and `watch=1`
/// both start a watch.
fn query_bool(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Resources whose DELETE answers with the deleted object even when it is gone at once (as
/// kube-apiserver's stores for them do); the others answer a `Status` of `Success` unless the
/// object stays behind for its finalizers, when the answer is the object being deleted.
const RETURNS_DELETED_OBJECT: &[&str] = &[
    "pods",
    "services",
    "serviceaccounts",
    "namespaces",
    "customresourcedefinitions",
];

fn resource(
    shared: &Shared,
    h: &Headers<'_>,
    method: &Method,
    t: Target,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let (accept, ct) = (h.accept, h.content_type);
    // The manager a write's fields are recorded under.
    let manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| managed::default_manager(h.user_agent));
    let def = shared.storage.lock().def(&t.res)?;
    let is_watch = t.watch_path || query_bool(q, "watch");
    let verb = match (method, &t.name, is_watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, Some(_), _) => "get",
        (&Method::GET, None, _) => "list",
        (&Method::POST, None, _) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), _) => "delete",
        (&Method::DELETE, None, _) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    shared.faults.count_request(verb, &def.plural);
    if let Some(e) = shared.faults.take_failure(verb, &def.plural) {
        return Err(e);
    }
    if def.namespaced && t.ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    if !def.namespaced && t.ns.is_some() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let status_only = match t.sub.as_deref() {
        None => false,
        Some("status") if def.status => true,
        Some("scale") if def.scale.is_some() && matches!(verb, "get" | "update" | "patch") => {
            return scale_request(shared, &def, verb, &t, ct, body);
        }
        Some(_) => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    tracing::debug!(resource = %def.plural, namespace = %ns, name = %name, verb, "request");
    let one = negotiate(accept, Shape::Object, shared.drop_managed_fields);
    match verb {
        "get" => Ok(object_response(
            200,
            one,
            &shared.storage.lock().get(&t.res, &ns, &name)?,
        )),
        "list" => list(
            shared,
            &t,
            q,
            negotiate(accept, Shape::List, shared.drop_managed_fields),
        ),
        "watch" => watch(shared, &t, q, one),
        "create" => {
            let fv = field_validation(q, "CreateOptions")?;
            let mut obj = decode::object_body(&def, ct, body)?;
            let warnings = known_fields(shared, &def, &mut obj, fv)?;
            if obj.is_object() {
                managed::record_update(&def, None, &mut obj, &manager, false);
            }
            let created = shared.storage.lock().create(&t.res, &ns, obj)?;
            Ok(with_warnings(
                object_response(201, one, &created),
                &warnings,
            ))
        }
        "update" => {
            let fv = field_validation(q, "UpdateOptions")?;
            let mut obj = decode::object_body(&def, ct, body)?;
            let warnings = known_fields(shared, &def, &mut obj, fv)?;
            let mut s = shared.storage.lock();
            if !status_only && obj.is_object() {
                let old = s.get(&t.res, &ns, &name)?;
                managed::record_update(&def, Some(&old), &mut obj, &manager, false);
            }
            let updated = s.update(&t.res, &ns, &name, obj, status_only)?;
            Ok(with_warnings(
                object_response(200, one, &updated),
                &warnings,
            ))
        }
        "patch" => {
            let fv = field_validation(q, "PatchOptions")?;
            let media = ct.split(';').next().unwrap_or_default().trim();
            // An apply configuration is YAML (JSON is YAML too).
            let patch = if media == "application/apply-patch+yaml" {
                decode::object_body(&def, "application/yaml", body)?
            } else {
                parse_body(body)?
            };
            let mut s = shared.storage.lock();
            if media == "application/apply-patch+yaml" {
                if q.get("fieldManager").is_none_or(String::is_empty) {
                    return Err(ApiError::invalid(
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
                check_object_shape(&patch)?;
                let force = query_bool(q, "force");
                let current = s.get(&t.res, &ns, &name).ok();
                if current.is_none() && status_only {
                    return Err(ApiError::not_found(&def.group, &def.plural, &name));
                }
                let mut obj = managed::apply(
                    &def,
                    current.as_deref(),
                    &patch,
                    &manager,
                    force,
                    status_only,
                )?;
                obj["metadata"]["name"] = json!(name);
                let warnings = known_fields_locked(&s, &def, &mut obj, fv)?;
                return Ok(match current {
                    None => with_warnings(
                        object_response(201, one, &s.create(&t.res, &ns, obj)?),
                        &warnings,
                    ),
                    Some(current) => {
                        // An apply carrying a resourceVersion is a precondition.
                        if patch.pointer("/metadata/resourceVersion").is_none() {
                            obj["metadata"]["resourceVersion"] =
                                current["metadata"]["resourceVersion"].clone();
                        }
                        let updated = s.update(&t.res, &ns, &name, obj, status_only)?;
                        with_warnings(object_response(200, one, &updated), &warnings)
                    }
                });
            }
            let current = s.get(&t.res, &ns, &name)?;
            let mut doc = (*current).clone();
            match media {
                "application/json-patch+json" => json_patch(&mut doc, &patch)?,
                "application/strategic-merge-patch+json" if def.builtin => {
                    strategic_merge_patch(&mut doc, &patch)?
                }
                // Custom resources have no patch merge keys: a cluster refuses the media type.
                "application/strategic-merge-patch+json" => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                "application/merge-patch+json" => merge_patch(&mut doc, &patch),
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                    ));
                }
            }
            check_object_shape(&doc)?;
            let warnings = known_fields_locked(&s, &def, &mut doc, fv)?;
            if !status_only {
                managed::record_update(&def, Some(&current), &mut doc, &manager, false);
            }
            // A patch carrying a resourceVersion is a precondition; otherwise it applies to the latest.
            let precondition = patch.pointer("/metadata/resourceVersion").cloned();
            doc["metadata"]["resourceVersion"] =
                precondition.unwrap_or_else(|| current["metadata"]["resourceVersion"].clone());
            let updated = s.update(&t.res, &ns, &name, doc, status_only)?;
            Ok(with_warnings(
                object_response(200, one, &updated),
                &warnings,
            ))
        }
        "delete" => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                parse_object_body(ct, body)?
            };
            let mut s = shared.storage.lock();
            let deleted = s.delete(&t.res, &ns, &name, &opts)?;
            // Still held by finalizers when the API server answered (the collector's work that
            // follows may already have removed it).
            let pending = deleted.pointer("/metadata/deletionTimestamp").is_some();
            drop(s);
            if pending || RETURNS_DELETED_OBJECT.contains(&def.plural.as_str()) {
                return Ok(object_response(200, one, &deleted));
            }
            let mut details = json!({
                "name": name,
                "kind": def.plural,
                "uid": deleted.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            });
            if !def.group.is_empty() {
                details["group"] = json!(def.group);
            }
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        _ => {
            let sel = selectors(shared, q, &def)?;
            let opts = if body.is_empty() {
                json!({})
            } else {
                parse_object_body(ct, body)?
            };
            let mut s = shared.storage.lock();
            let objs = s.snapshot(&t.res, None)?;
            let mut items = Vec::new();
            for ((ons, oname), o) in objs {
                if (t.ns.is_none() || ons == ns) && sel.matches(&o) {
                    match s.delete(&t.res, &ons, &oname, &opts) {
                        Ok(deleted) => items.push(deleted),
                        // Collected already, as a dependent of one deleted before it.
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let out = negotiate(accept, Shape::List, shared.drop_managed_fields);
            let meta = json!({"resourceVersion": s.current_rv().to_string()});
            drop(s);
            Ok(bytes_response(
                200,
                out.list_bytes(
                    &def.api_version(),
                    &def.kind,
                    &meta,
                    items.iter().map(|a| &**a),
                ),
            ))
        }
    }
}

fn field_validation(
    q: &HashMap<String, String>,
    options: &str,
) -> Result<FieldValidation, ApiError> {
    decode::field_validation(q.get("fieldValidation").map(String::as_str), options)
}

/// The decode-time checks of a written object: Go types, then the fields the kind does not
/// have (dropped; refused under `Strict`). Returns the `Warning` header values.
fn known_fields(
    shared: &Shared,
    def: &ResourceDef,
    obj: &mut Value,
    fv: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let s = shared.storage.lock();
    known_fields_locked(&s, def, obj, fv)
}

fn known_fields_locked(
    s: &super::storage::Storage,
    def: &ResourceDef,
    obj: &mut Value,
    fv: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if !s.validate {
        return Ok(Vec::new());
    }
    decode::check_types(def, obj)?;
    let unknown = decode::drop_unknown(def, obj);
    match fv {
        FieldValidation::Strict if !unknown.is_empty() => Err(decode::strict_error(def, &unknown)),
        FieldValidation::Warn => Ok(decode::warnings(&unknown)),
        _ => Ok(Vec::new()),
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(v) = http::HeaderValue::from_str(w) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// `GET`, `PUT` and `PATCH` of `/scale`: the object's `Scale`, and writes of its replica count.
fn scale_request(
    shared: &Shared,
    def: &ResourceDef,
    verb: &str,
    t: &Target,
    ct: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let paths = def
        .scale
        .as_ref()
        .ok_or_else(ApiError::method_not_allowed)?;
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut s = shared.storage.lock();
    let current = s.get(&t.res, &ns, &name)?;
    let scale = match verb {
        "get" => return Ok(json_response(200, &super::scale::to_scale(paths, &current))),
        "update" => parse_object_body(ct, body)?,
        _ => {
            let patch = parse_body(body)?;
            let mut doc = super::scale::to_scale(paths, &current);
            match ct.split(';').next().unwrap_or_default().trim() {
                "application/json-patch+json" => json_patch(&mut doc, &patch)?,
                "application/merge-patch+json" => merge_patch(&mut doc, &patch),
                "application/strategic-merge-patch+json" => {
                    strategic_merge_patch(&mut doc, &patch)?
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                    ));
                }
            }
            // A patch applies to the latest version unless it carries a resourceVersion.
            if patch.pointer("/metadata/resourceVersion").is_none() {
                doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            }
            doc
        }
    };
    check_object_shape(&scale)?;
    let out = super::scale::write(&mut s, def, paths, &ns, &name, &scale)?;
    Ok(json_response(200, &out))
}

/// Where a list starts: the resourceVersion it is served at and, for a continued list, the key
/// after which it resumes (from `continue`, `resourceVersion` and `resourceVersionMatch`, with
/// kube-apiserver's answers: 410 for an expired token, 504 for a version from the future, 422
/// for an unsupported match).
fn list_start(
    shared: &Shared,
    s: &mut Storage,
    q: &HashMap<String, String>,
) -> Result<(u64, Option<(String, String)>), ApiError> {
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let rv_match = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    Ok(match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if shared.faults.take_expire_next_continue() {
                s.advance_and_compact();
            }
            let decoded =
                unhex(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            let (rv_s, key) = decoded
                .split_once('\n')
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            let rv = parse_rv(rv_s)?;
            if rv < s.oldest_rv() {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            let (kns, kname) = key
                .split_once('/')
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            (rv, Some((kns.to_string(), kname.to_string())))
        }
        None => {
            let at = match (rv, rv_match) {
                ("" | "0", "") | ("", "NotOlderThan") | ("0", "NotOlderThan") => s.current_rv(),
                (n, "NotOlderThan" | "") => {
                    let n = parse_rv(n)?;
                    if n > s.current_rv() {
                        return Err(ApiError::new(
                            504,
                            "Timeout",
                            format!(
                                "Too large resource version: {n}, current: {}",
                                s.current_rv()
                            ),
                        ));
                    }
                    s.current_rv()
                }
                ("" | "0", "Exact") => {
                    return Err(ApiError::invalid(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"\" or \"0\"",
                    ));
                }
                (n, "Exact") => parse_rv(n)?,
                (_, other) => {
                    return Err(ApiError::invalid(format!(
                        "resourceVersionMatch: Unsupported value: {other:?}"
                    )));
                }
            };
            (at, None)
        }
    })
}

fn list(
    shared: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    out: Output,
) -> Result<Response<Body>, ApiError> {
    let def = shared.storage.lock().def(&t.res)?;
    let sel = selectors(shared, q, &def)?;
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let mut s = shared.storage.lock();
    let (at, start_after) = list_start(shared, &mut s, q)?;
    // Only the objects after the continue key, in the namespace asked for: a page costs what
    // it holds, not a copy of the whole resource.
    let objs = s.list_from(&t.res, at, t.ns.as_deref(), start_after.as_ref())?;
    drop(s);
    let mut items: Vec<&Value> = Vec::new();
    let mut cont = None;
    let mut remaining = 0usize;
    let match_all = sel.is_empty();
    for (i, o) in objs.iter().enumerate() {
        if !match_all && !sel.matches(o) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            if cont.is_none() {
                let last = items.last().map(|l| {
                    let m = |f: &str| {
                        l.pointer(&format!("/metadata/{f}"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    (
                        if def.namespaced {
                            m("namespace")
                        } else {
                            String::new()
                        },
                        m("name"),
                    )
                });
                if let Some((lns, lname)) = last {
                    cont = Some(hex(&format!("{at}\n{lns}/{lname}")));
                }
            }
            if match_all {
                // Without selectors every object left is in the rest of the list.
                remaining = objs.len() - i;
                break;
            }
            remaining += 1;
            continue;
        }
        items.push(o);
    }
    let mut meta = json!({"resourceVersion": at.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(remaining);
    }
    if let Some(shard) = &sel.shard {
        meta["shardInfo"] = json!({"selector": shard.canonical()});
    }
    Ok(bytes_response(
        200,
        out.list_bytes(&def.api_version(), &def.kind, &meta, items),
    ))
}

fn watch(
    shared: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    out: Output,
) -> Result<Response<Body>, ApiError> {
    let sel = selectors(shared, q, &shared.storage.lock().def(&t.res)?)?;
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let send_initial = query_bool(q, "sendInitialEvents");
    if send_initial && q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    let from = match rv {
        "" | "0" => WatchFrom::Current,
        _ if send_initial => WatchFrom::Current,
        n => WatchFrom::After(parse_rv(n)?),
    };
    let bookmarks = query_bool(q, "allowWatchBookmarks").then_some(shared.bookmark_interval);
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Some(Duration::from_secs(s.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))
        })?)),
        None => None,
    };
    let (def, start) = {
        let mut s = shared.storage.lock();
        let def = s.def(&t.res)?;
        let start = s.watch(&t.res, t.ns.as_deref(), &sel, from)?;
        (def, start)
    };
    let opts = WatchOptions {
        namespace: t.ns.clone(),
        selectors: sel,
        bookmarks,
        timeout,
        initial_end_bookmark: send_initial,
        output: out,
        held: Some(shared.faults.events_held()),
    };
    let frames = stream(def, start, opts).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
