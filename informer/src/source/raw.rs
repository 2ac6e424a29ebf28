//! [`ListWatch`] over `kube::Client`'s raw HTTP API, decoding with the skipping [`Decoder`].
//!
//! [`kube::Api`] decodes every list page and watch event into the full object before anyone can
//! look at it. [`RawApi`] sends the same requests (the same query parameters as the
//! [`api`](super::api) source) through [`kube::Client::send`], reads the response bytes itself and
//! decodes them with a [`Decoder`]: `metadata.managedFields` and any configured path are skipped
//! while parsing, list items go one by one straight into the page's vector, and watch lines are
//! split and decoded as they arrive. `K` may be a full type or a projection (see
//! [`impl_projection!`](crate::impl_projection)), or `PartialObjectMeta<K>` from
//! [`RawApi::metadata_all`] / [`RawApi::metadata_namespaced`], which ask the server for
//! metadata only through the `Accept` header (as kubectl does) and still skip `managedFields`
//! while parsing: about a kilobyte per object instead of tens.
//!
//! Errors map as in the [`api`](super::api) source: a non-2xx response carrying a `Status`
//! becomes [`SourceError::Status`] (so 410 is [`is_gone`](SourceError::is_gone)), a body that is
//! not a `Status` becomes a status with the HTTP code, a line that cannot be decoded is a
//! [`SourceError::Malformed`] item (the watch goes on), a broken connection is
//! [`SourceError::Transport`]. A watch event longer than
//! [`DecodeOptions::max_event_bytes`](crate::decode::DecodeOptions::max_event_bytes) (64 MiB by
//! default) is not buffered further: the watch ends with [`SourceError::EventTooLarge`].
//!
//! # On the wire: gzip and server-side dropping
//!
//! [`WireOptions`] says what the requests ask of the server beyond the list or watch itself.
//! By default they send `Accept-Encoding: gzip`, as client-go does: kube-apiserver then
//! compresses lists over 128 KiB and, since 1.37, streaming-list watches, one gzip member per
//! flush; both are decoded here as the bytes arrive, members split anywhere across chunks (see
//! [`WireOptions::gzip`] for the trade-off and how to turn it off). With
//! [`WireOptions::drop_managed_fields`] the `Accept` header also carries
//! `drop=metadata.managedFields` (KEP-5958), so a server that knows it never serializes
//! managedFields; a server that does not know it ignores the parameter, and the parse-time skip
//! still drops them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::Pod;
//! use reflex_informer::decode::{DecodeOptions, SkipPath};
//! use reflex_informer::source::raw::RawApi;
//! use reflex_informer::source::{ListParams, ListWatch};
//!
//! let client = kube::Client::try_default().await?;
//! let pods: RawApi<Pod> = RawApi::namespaced(client, "default").with_decode_options(
//!     &DecodeOptions::default().skip(SkipPath::pointer("/status/conditions")?),
//! );
//! let page = pods.list(&ListParams { limit: Some(500), ..Default::default() }).await?;
//! assert!(page.items.iter().all(|p| p.metadata.managed_fields.is_none()));
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use kube::api::PartialObjectMeta;
use kube::client::Body;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::api::{from_kube_error, from_kube_status, to_kube_list, to_kube_watch};
use super::gzip::{self, Gunzip};
use super::{
    ApiStatus, ListFuture, ListPage, ListParams, ListWatch, Reuse, SourceError, WatchEvent,
    WatchFuture, WatchParams,
};
use crate::decode::{DecodeError, DecodeOptions, Decoder};

/// Lists and watches `K` at one URL path through a [`kube::Client`], decoding with a
/// [`Decoder`] (by default: skip `metadata.managedFields`).
pub struct RawApi<K> {
    client: kube::Client,
    request: kube::core::Request,
    decoder: Decoder,
    metadata_only: bool,
    wire: WireOptions,
    _k: PhantomData<fn() -> K>,
}

/// What the requests of a [`RawApi`] ask of the server beyond the list or watch itself.
///
/// ```
/// use reflex_informer::source::raw::WireOptions;
///
/// let default = WireOptions::default();
/// assert!(default.gzip && !default.drop_managed_fields);
/// let lean = WireOptions { drop_managed_fields: true, ..WireOptions::default() };
/// assert_eq!(
///     lean.accept(None).as_deref(),
///     Some("application/json;drop=metadata.managedFields"),
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireOptions {
    /// Send `Accept-Encoding: gzip` on lists and watches and decode what comes back compressed
    /// (default `true`, as client-go). kube-apiserver compresses lists over 128 KiB and, from
    /// 1.37 on, streaming-list watches; other watches stay uncompressed. Compression trades the
    /// server's and the client's CPU for bytes on the network: worth it to a remote cluster; on
    /// a loopback API server it saved no time in BENCHMARKS.md's "Issue 20" runs (half the
    /// bytes of a streaming list, an eighth of a paged one). With `false` the requests send
    /// `Accept-Encoding: identity`.
    pub gzip: bool,
    /// Add `drop=metadata.managedFields` to the `Accept` header (KEP-5958, alpha in
    /// Kubernetes 1.38 behind the `ManagedFieldsOptOut` gate; default `false`): a server that
    /// supports it leaves managedFields out of every list item and watch event, which saves
    /// its serialization and the bytes on the wire. Servers that do not support it ignore the
    /// parameter, and the decoder's parse-time skip drops managedFields all the same. Not sent
    /// when the decoder keeps managedFields
    /// ([`DecodeOptions::keep_managed_fields`](crate::decode::DecodeOptions::keep_managed_fields)):
    /// the informer then asks for what it keeps.
    pub drop_managed_fields: bool,
}

impl Default for WireOptions {
    /// gzip on, no server-side dropping.
    fn default() -> Self {
        WireOptions {
            gzip: true,
            drop_managed_fields: false,
        }
    }
}

/// The `Accept` parameter of KEP-5958 that asks the server to leave out managedFields.
pub const DROP_MANAGED_FIELDS: &str = "drop=metadata.managedFields";

impl WireOptions {
    /// Uncompressed requests, no server-side dropping: the requests of kube's own `Api`.
    pub fn identity() -> Self {
        WireOptions {
            gzip: false,
            drop_managed_fields: false,
        }
    }

    /// The `Accept` header these options ask for, given the media ranges a request would send
    /// otherwise (`None`: no header, which means plain JSON). `None` back: no header needed.
    pub fn accept(&self, ranges: Option<&str>) -> Option<String> {
        if !self.drop_managed_fields {
            return ranges.map(str::to_string);
        }
        let ranges = ranges.unwrap_or("application/json");
        Some(
            ranges
                .split(',')
                .map(|range| format!("{};{DROP_MANAGED_FIELDS}", range.trim()))
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    fn accept_encoding(&self) -> http::HeaderValue {
        http::HeaderValue::from_static(if self.gzip { "gzip" } else { "identity" })
    }
}

/// The `Accept` header of a metadata-only list, as client-go's metadata client sends it (minus
/// protobuf): the server answers with a `PartialObjectMetadataList`, or, if it cannot, with the
/// plain list, which decodes into `PartialObjectMeta` just the same.
pub const METADATA_LIST_ACCEPT: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";

/// The `Accept` header of a metadata-only watch: every event carries a `PartialObjectMetadata`.
pub const METADATA_WATCH_ACCEPT: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

impl<K> Clone for RawApi<K> {
    fn clone(&self) -> Self {
        RawApi {
            client: self.client.clone(),
            request: kube::core::Request::new(self.request.url_path.clone()),
            decoder: self.decoder.clone(),
            metadata_only: self.metadata_only,
            wire: self.wire.clone(),
            _k: PhantomData,
        }
    }
}

impl<K> fmt::Debug for RawApi<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawApi")
            .field("url_path", &self.request.url_path)
            .field("decoder", &self.decoder)
            .field("metadata_only", &self.metadata_only)
            .field("wire", &self.wire)
            .finish()
    }
}

impl<K: kube::Resource> RawApi<K>
where
    K::DynamicType: Default,
{
    /// `K` in every namespace (or a cluster-scoped `K`).
    pub fn all(client: kube::Client) -> Self {
        Self::all_with(client, &K::DynamicType::default())
    }

    /// `K` in one namespace.
    pub fn namespaced(client: kube::Client, namespace: &str) -> Self {
        Self::namespaced_with(client, namespace, &K::DynamicType::default())
    }
}

impl<K: kube::Resource> RawApi<K> {
    /// `K` in every namespace, for a `K` with runtime type information (for example
    /// `DynamicObject` and an [`ApiResource`](kube::core::ApiResource)).
    pub fn all_with(client: kube::Client, dt: &K::DynamicType) -> Self {
        Self::at(client, K::url_path(dt, None))
    }

    /// `K` in one namespace, for a `K` with runtime type information.
    pub fn namespaced_with(client: kube::Client, namespace: &str, dt: &K::DynamicType) -> Self {
        Self::at(client, K::url_path(dt, Some(namespace)))
    }
}

impl<K: kube::Resource> RawApi<PartialObjectMeta<K>> {
    /// Metadata-only lists and watches of `K` in every namespace (or of a cluster-scoped `K`):
    /// the requests ask the server for `PartialObjectMetadata` with the `Accept` headers
    /// [`METADATA_LIST_ACCEPT`] and [`METADATA_WATCH_ACCEPT`], as kubectl and client-go's
    /// metadata client do, so only metadata crosses the wire.
    pub fn metadata_all(client: kube::Client, dt: &K::DynamicType) -> Self {
        Self::at(client, K::url_path(dt, None)).metadata_only()
    }

    /// Metadata-only lists and watches of `K` in one namespace; see
    /// [`metadata_all`](Self::metadata_all).
    pub fn metadata_namespaced(client: kube::Client, namespace: &str, dt: &K::DynamicType) -> Self {
        Self::at(client, K::url_path(dt, Some(namespace))).metadata_only()
    }

    fn metadata_only(mut self) -> Self {
        self.metadata_only = true;
        self
    }
}

impl<K> RawApi<K> {
    /// `K` at an explicit collection URL path (`/api/v1/namespaces/ns/pods`).
    pub fn at(client: kube::Client, url_path: impl Into<String>) -> Self {
        RawApi {
            client,
            request: kube::core::Request::new(url_path),
            decoder: Decoder::default(),
            metadata_only: false,
            wire: WireOptions::default(),
            _k: PhantomData,
        }
    }

    /// This source, asking the server for what `options` say (gzip, server-side dropping)
    /// instead of the default (gzip only).
    pub fn with_wire_options(mut self, options: &WireOptions) -> Self {
        self.wire = options.clone();
        self
    }

    /// The wire options in use.
    pub fn wire_options(&self) -> &WireOptions {
        &self.wire
    }

    /// This source, decoding with `options` instead of the default (skip managedFields only).
    pub fn with_decode_options(mut self, options: &DecodeOptions) -> Self {
        self.decoder = Decoder::new(options);
        self
    }

    /// The decoder in use.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The collection's URL path.
    pub fn url_path(&self) -> &str {
        &self.request.url_path
    }

    /// Whether this source asks the server for `PartialObjectMetadata`.
    pub fn is_metadata_only(&self) -> bool {
        self.metadata_only
    }

    /// The list request: a metadata-only source asks for `PartialObjectMetadataList`.
    fn list_request(
        &self,
        params: &ListParams,
    ) -> Result<http::Request<Vec<u8>>, kube::core::request::Error> {
        let request = self.request.list(&to_kube_list(params))?;
        let request = with_shard_selector(request, params.shard_selector.as_deref());
        Ok(self.negotiate(request, METADATA_LIST_ACCEPT))
    }

    /// The watch request: a metadata-only source asks for `PartialObjectMetadata` events.
    fn watch_request(
        &self,
        params: &WatchParams,
        rv: &str,
    ) -> Result<http::Request<Vec<u8>>, kube::core::request::Error> {
        let request = self.request.watch(&to_kube_watch(params), rv)?;
        let request = with_shard_selector(request, params.shard_selector.as_deref());
        Ok(self.negotiate(request, METADATA_WATCH_ACCEPT))
    }

    /// The `Accept` and `Accept-Encoding` headers of a request, given the ranges a
    /// metadata-only request of its kind sends.
    fn negotiate(
        &self,
        mut request: http::Request<Vec<u8>>,
        metadata_accept: &str,
    ) -> http::Request<Vec<u8>> {
        let ranges = self.metadata_only.then_some(metadata_accept);
        let accept = if self.decoder.skips_managed_fields() {
            self.wire.accept(ranges)
        } else {
            ranges.map(str::to_string)
        };
        let headers = request.headers_mut();
        if let Some(value) = accept.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
            headers.insert(http::header::ACCEPT, value);
        }
        headers.insert(http::header::ACCEPT_ENCODING, self.wire.accept_encoding());
        request
    }
}

/// Adds `shardSelector` to a list or watch request (kube's parameters have no such field).
fn with_shard_selector(
    mut request: http::Request<Vec<u8>>,
    selector: Option<&str>,
) -> http::Request<Vec<u8>> {
    let Some(selector) = selector else {
        return request;
    };
    let uri = request.uri().to_string();
    let pair: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("shardSelector", selector)
        .finish();
    let sep = if uri.contains('?') { '&' } else { '?' };
    // The URI was valid and the pair is percent-encoded, so the result parses.
    if let Ok(with) = format!("{uri}{sep}{pair}").parse() {
        *request.uri_mut() = with;
    }
    request
}

fn malformed(context: String, err: DecodeError) -> SourceError {
    SourceError::Malformed {
        context,
        source: Some(Box::new(err)),
    }
}

fn gzip_error(what: &str, err: io::Error) -> SourceError {
    SourceError::Malformed {
        context: format!("{what}: gzip body"),
        source: Some(Box::new(err)),
    }
}

/// How many decompressed bytes a list decodes at a time: the buffer holds at most this much
/// beyond the item being received.
const LIST_STEP: usize = 256 * 1024;

/// Decodes a list response's body as its chunks arrive, decompressing it first when it came
/// gzip-encoded: neither the compressed nor the decompressed body is ever held whole, each item
/// is decoded once its last byte is in. Returns the page, the body's decompressed length and the
/// bytes that crossed the wire.
async fn decode_list_body<K: DeserializeOwned>(
    response: http::Response<Body>,
    decoder: &Decoder,
    reuse: Option<Reuse<K>>,
    what: &str,
) -> Result<(ListPage<K>, u64, u64), SourceError> {
    let gzip = gzip::is_gzip(response.headers())
        .map_err(|e| SourceError::malformed(format!("{what}: {e}")))?;
    let mut list = decoder.list_decoder::<K>();
    if let Some(reuse) = reuse {
        list = list.reusing(reuse);
    }
    let mut gunzip = gzip.then(Gunzip::new);
    let mut wire = 0u64;
    let mut data = response.into_body().into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| from_kube_error(e, what))?;
        match gunzip.as_mut() {
            None => {
                wire += chunk.len() as u64;
                list.push(&chunk)
                    .map_err(|e| malformed(what.to_owned(), e))?;
            }
            Some(gz) => {
                gz.push(chunk);
                while gz.has_pending() {
                    let stop_above = list.buffered() + LIST_STEP;
                    gz.decode_into(list.buffer(), stop_above)
                        .map_err(|e| gzip_error(what, e))?;
                    list.advance().map_err(|e| malformed(what.to_owned(), e))?;
                }
            }
        }
    }
    if let Some(gz) = gunzip {
        wire = gz.wire_bytes();
        gz.finish_into(list.buffer())
            .map_err(|e| gzip_error(what, e))?;
    }
    let body_bytes = list.offset() + list.buffered() as u64;
    let page = list.finish().map_err(|e| malformed(what.to_owned(), e))?;
    Ok((page, body_bytes, wire))
}

/// Sends `request`; a non-2xx response becomes [`SourceError::Status`] (from its `Status` body,
/// or from the HTTP code and body text when it has none), like kube's own error handling.
async fn send(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
    what: &str,
) -> Result<http::Response<Body>, SourceError> {
    let response = client
        .send(request.map(Body::from))
        .await
        .map_err(|e| from_kube_error(e, what))?;
    let code = response.status();
    if code.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after_header(response.headers());
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .map_err(|e| from_kube_error(e, what))?;
    let status = match serde_json::from_slice::<kube::core::Status>(&body) {
        Ok(status) => {
            let mut status = from_kube_status(&status);
            if status.code == 0 {
                status.code = code.as_u16();
            }
            status
        }
        Err(_) => ApiStatus::new(
            code.as_u16(),
            code.canonical_reason().unwrap_or("Unknown"),
            String::from_utf8_lossy(&body).trim(),
        ),
    };
    let status = ApiStatus {
        retry_after: status.retry_after.or(retry_after),
        ..status
    };
    Err(SourceError::Status(status))
}

/// The `Retry-After` header in its delta-seconds form (what the API server sends); an HTTP date
/// or garbage is ignored (the reflector's own backoff applies then).
fn retry_after_header(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// Whether a body read error is the server ending a long watch by closing the connection
/// mid-chunk, which ends the watch rather than failing it.
fn is_unexpected_eof(err: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
            || e.to_string().contains("unexpected EOF during chunk")
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The state of a watch stream: the body, its gzip decoder when it came compressed, the bytes
/// after the last full line, and whether the body has ended.
struct Lines<K> {
    body: BoxStream<'static, Result<Bytes, kube::Error>>,
    gunzip: Option<Gunzip>,
    /// A gzip decoding failure, reported once the lines decoded before it are delivered.
    gzip_failed: Option<io::Error>,
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline, so each byte is searched once.
    scanned: usize,
    ended: bool,
    decoder: Decoder,
    what: String,
    _k: PhantomData<fn() -> K>,
}

impl<K: DeserializeOwned> Lines<K> {
    /// The next event, error or end of the watch.
    async fn next(&mut self) -> Option<Result<WatchEvent<K>, SourceError>> {
        loop {
            let from = self.scanned.min(self.buf.len());
            if let Some(at) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let pos = from + at;
                self.scanned = 0;
                let line = self.buf.split_to(pos + 1);
                let line = line[..pos].trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return Some(self.decode(line));
            }
            self.scanned = self.buf.len();
            let limit = self.decoder.max_event_bytes();
            if self.buf.len() > limit {
                // No end of line within the limit: refuse the event now rather than buffer it.
                let size = self.buf.len();
                return Some(Err(self.too_large(size)));
            }
            if let Some(e) = self.gzip_failed.take() {
                return Some(Err(self.corrupt(e)));
            }
            if let Some(gz) = self.gunzip.as_mut().filter(|gz| gz.has_pending()) {
                // Decode a bounded step at a time: the limit above is checked in between.
                if let Err(e) = gz.decode_into(&mut self.buf, limit) {
                    // The lines decoded before the failure go out first.
                    self.gunzip = None;
                    self.gzip_failed = Some(e);
                }
                continue;
            }
            if self.ended {
                if let Some(gz) = self.gunzip.take() {
                    if let Err(e) = gz.finish_into(&mut self.buf) {
                        // The body ended inside a member: like a connection closed mid-event,
                        // the watch ends and resumes from the last resourceVersion.
                        tracing::debug!(watch = %self.what, error = %e, "watch ended inside a gzip member");
                    }
                    continue;
                }
                let rest = std::mem::take(&mut self.buf);
                self.scanned = 0;
                let rest = rest.trim_ascii();
                if rest.is_empty() {
                    return None;
                }
                return match self.decoder.decode_event(rest) {
                    Ok(event) => Some(Ok(event)),
                    Err(DecodeError::EventTooLarge { size, .. }) => Some(Err(self.too_large(size))),
                    Err(DecodeError::Json { source, .. }) if source.is_eof() => {
                        // The connection closed in the middle of an event: the watch ended,
                        // and is resumed from the last resourceVersion like any other end.
                        tracing::debug!(watch = %self.what, bytes = rest.len(), "watch ended mid-event");
                        None
                    }
                    Err(e) => Some(Err(malformed(self.what.clone(), e))),
                };
            }
            match self.body.next().await {
                Some(Ok(chunk)) => match self.gunzip.as_mut() {
                    Some(gz) => gz.push(chunk),
                    None => self.buf.extend_from_slice(&chunk),
                },
                Some(Err(e)) if is_unexpected_eof(&e) => {
                    tracing::debug!(watch = %self.what, error = %e, "watch connection closed");
                    self.ended = true;
                }
                Some(Err(e)) => {
                    self.ended = true;
                    self.gunzip = None;
                    self.buf.clear();
                    self.scanned = 0;
                    return Some(Err(SourceError::Transport(Box::new(e))));
                }
                None => self.ended = true,
            }
        }
    }

    fn decode(&mut self, line: &[u8]) -> Result<WatchEvent<K>, SourceError> {
        match self.decoder.decode_event(line) {
            Ok(event) => Ok(event),
            Err(DecodeError::EventTooLarge { size, .. }) => Err(self.too_large(size)),
            Err(e) => {
                tracing::warn!(watch = %self.what, error = %e, "undecodable watch event");
                Err(malformed(self.what.clone(), e))
            }
        }
    }

    /// Ends the watch with a malformed-body error: a gzip stream that fails to decode cannot be
    /// resynchronized, so the rest is dropped unread.
    fn corrupt(&mut self, err: io::Error) -> SourceError {
        tracing::warn!(watch = %self.what, error = %err, "undecodable gzip watch body; ending the watch");
        self.ended = true;
        self.gunzip = None;
        self.buf = BytesMut::new();
        self.scanned = 0;
        gzip_error(&self.what, err)
    }

    /// Ends the watch with [`SourceError::EventTooLarge`]: the rest of the stream is dropped
    /// unread (and with it the connection).
    fn too_large(&mut self, size: usize) -> SourceError {
        let limit = self.decoder.max_event_bytes();
        tracing::warn!(watch = %self.what, size, limit, "watch event over the size limit; ending the watch");
        self.ended = true;
        self.gunzip = None;
        self.buf = BytesMut::new();
        self.scanned = 0;
        SourceError::EventTooLarge {
            context: self.what.clone(),
            limit,
            size,
        }
    }
}

impl<K> RawApi<K>
where
    K: DeserializeOwned + Send + Sync + 'static,
{
    /// A list request, decoding each item as it arrives (through `reuse`, if any).
    fn list_with(&self, params: &ListParams, reuse: Option<Reuse<K>>) -> ListFuture<K> {
        let client = self.client.clone();
        let decoder = self.decoder.clone();
        let url = self.request.url_path.clone();
        let request = self.list_request(params);
        let span = tracing::debug_span!(
            "raw_list",
            resource = %url,
            resource_version = params.resource_version.as_deref().unwrap_or(""),
            limit = params.limit,
        );
        async move {
            let what = format!("list of {url}");
            let request =
                request.map_err(|e| SourceError::InvalidRequest(format!("{what}: {e}")))?;
            let response = send(&client, request, &what).await?;
            let (page, bytes, wire_bytes) =
                decode_list_body(response, &decoder, reuse, &what).await?;
            tracing::debug!(
                items = page.items.len(),
                bytes,
                wire_bytes,
                resource_version = %page.resource_version,
                "decoded list page"
            );
            Ok(page)
        }
        .instrument(span)
        .boxed()
    }
}

impl<K> ListWatch<K> for RawApi<K>
where
    K: DeserializeOwned + Send + Sync + 'static,
{
    fn list(&self, params: &ListParams) -> ListFuture<K> {
        self.list_with(params, None)
    }

    fn list_reusing(&self, params: &ListParams, reuse: Reuse<K>) -> ListFuture<K> {
        self.list_with(params, Some(reuse))
    }

    fn watch(&self, params: &WatchParams) -> WatchFuture<K> {
        let client = self.client.clone();
        let decoder = self.decoder.clone();
        let url = self.request.url_path.clone();
        let rv = params.resource_version.clone();
        let request = self.watch_request(params, &rv);
        let span = tracing::debug_span!("raw_watch", resource = %url, resource_version = %rv);
        async move {
            let what = format!("watch of {url} from {rv:?}");
            let request =
                request.map_err(|e| SourceError::InvalidRequest(format!("{what}: {e}")))?;
            let response = send(&client, request, &what).await?;
            let gunzip = match gzip::is_gzip(response.headers()) {
                Ok(true) => Some(Gunzip::new()),
                Ok(false) => None,
                Err(e) => return Err(SourceError::malformed(format!("{what}: {e}"))),
            };
            let lines = Lines::<K> {
                body: response.into_body().into_data_stream().boxed(),
                gunzip,
                gzip_failed: None,
                buf: BytesMut::new(),
                scanned: 0,
                ended: false,
                decoder,
                what,
                _k: PhantomData,
            };
            let events = stream::unfold(lines, |mut lines| async move {
                let item = lines.next().await?;
                Some((item, lines))
            });
            Ok(events.boxed())
        }
        .instrument(span)
        .boxed()
    }

    fn describe(&self) -> String {
        if self.metadata_only {
            format!("{} (raw, metadata only)", self.request.url_path)
        } else {
            format!("{} (raw)", self.request.url_path)
        }
    }
}
