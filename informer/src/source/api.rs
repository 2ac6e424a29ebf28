//! [`ListWatch`] over a real API server through [`kube::Api`].
//!
//! Implemented for `Api<K>` for every `K` kube can list and watch (typed `k8s_openapi` objects,
//! custom resources, [`DynamicObject`](kube::core::DynamicObject)), and, through the
//! [`MetadataOnly`] wrapper, for [`PartialObjectMeta<K>`]: metadata-only lists and watches that
//! decode a few hundred bytes per object instead of the whole object.
//!
//! kube's watch stream reports a line it cannot decode as an error item and keeps going; here it
//! becomes [`SourceError::Malformed`] with the resource in its context, never a panic.
//!
//! One deviation from client-go: kube omits `resourceVersion=0` when a `limit` is set (it would
//! otherwise be a quorum read anyway on older servers), so a list at `"0"` is sent without a
//! limit and served whole from the watch cache, as the API server did before it paged from it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use reflex_informer::source::{ListParams, ListWatch};
//!
//! let client = kube::Client::try_default().await?;
//! let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
//! let page = ListWatch::list(&api, &ListParams { limit: Some(10), ..Default::default() }).await?;
//! println!("{} config maps at {}", page.items.len(), page.resource_version);
//! # Ok(()) }
//! ```

use std::fmt::Debug;
use std::sync::Arc;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{PartialObjectMeta, VersionMatch};
use kube::core::{ObjectList, WatchEvent as KubeWatchEvent};
use serde::de::DeserializeOwned;

use super::{
    ApiStatus, INITIAL_EVENTS_END_ANNOTATION, ListFuture, ListPage, ListParams, ListWatch,
    ResourceVersionMatch, SourceError, WatchEvent, WatchFuture, WatchParams,
};

/// Metadata-only lists and watches of `K` (`PartialObjectMeta<K>`), over an `Api<K>`.
#[derive(Clone)]
pub struct MetadataOnly<K>(pub kube::Api<K>);

pub(crate) fn to_kube_list(p: &ListParams) -> kube::api::ListParams {
    let resource_version = p.resource_version.clone().filter(|rv| !rv.is_empty());
    let version_match = match (&resource_version, p.resource_version_match) {
        (Some(_), Some(ResourceVersionMatch::NotOlderThan)) => Some(VersionMatch::NotOlderThan),
        (Some(_), Some(ResourceVersionMatch::Exact)) => Some(VersionMatch::Exact),
        _ => None,
    };
    kube::api::ListParams {
        label_selector: p.label_selector.clone(),
        field_selector: p.field_selector.clone(),
        continue_token: p.continue_token.clone(),
        limit: p.limit.filter(|_| resource_version.as_deref() != Some("0")),
        version_match,
        resource_version,
        ..Default::default()
    }
}

pub(crate) fn to_kube_watch(p: &WatchParams) -> kube::api::WatchParams {
    kube::api::WatchParams {
        label_selector: p.label_selector.clone(),
        field_selector: p.field_selector.clone(),
        timeout: p.timeout_seconds,
        bookmarks: p.allow_bookmarks || p.send_initial_events,
        send_initial_events: p.send_initial_events,
    }
}

/// Converts a kube error into a [`SourceError`]; `what` names the request for context.
pub fn from_kube_error(err: kube::Error, what: &str) -> SourceError {
    match err {
        kube::Error::Api(status) => SourceError::Status(from_kube_status(&status)),
        kube::Error::SerdeError(e) => SourceError::Malformed {
            context: format!("decoding {what}"),
            source: Some(Box::new(e)),
        },
        kube::Error::LinesCodecMaxLineLengthExceeded => {
            SourceError::malformed(format!("{what}: watch event longer than the line limit"))
        }
        kube::Error::FromUtf8(e) => SourceError::Malformed {
            context: format!("{what}: response is not UTF-8"),
            source: Some(Box::new(e)),
        },
        kube::Error::BuildRequest(e) => SourceError::InvalidRequest(format!("{what}: {e}")),
        other => SourceError::Transport(Box::new(other)),
    }
}

/// Converts an error *item* of kube's watch stream. kube decodes a line that is not a watch
/// event as a `Status` if it can, and a `Status` has no required field, so any JSON object (an
/// event with an unknown `type`, say) comes back as an API error with code 0. A real error
/// always carries a code; a code-0 "status" is a line that could not be decoded.
fn from_kube_watch_item_error(err: kube::Error, what: &str) -> SourceError {
    match err {
        kube::Error::Api(status) if status.code == 0 => SourceError::malformed(format!(
            "{what}: a watch line that is neither an event nor a Status"
        )),
        other => from_kube_error(other, what),
    }
}

/// Converts kube's `Status` into an [`ApiStatus`].
pub fn from_kube_status(status: &kube::core::Status) -> ApiStatus {
    ApiStatus {
        code: status.code,
        reason: status.reason.clone(),
        message: status.message.clone(),
        causes: status
            .details
            .as_ref()
            .map(|d| d.causes.iter().map(|c| c.reason.clone()).collect())
            .unwrap_or_default(),
        retry_after: status
            .details
            .as_ref()
            .filter(|d| d.retry_after_seconds > 0)
            .map(|d| std::time::Duration::from_secs(u64::from(d.retry_after_seconds))),
    }
}

fn from_kube_event<K>(event: KubeWatchEvent<K>) -> WatchEvent<K> {
    match event {
        KubeWatchEvent::Added(o) => WatchEvent::Added(o),
        KubeWatchEvent::Modified(o) => WatchEvent::Modified(o),
        KubeWatchEvent::Deleted(o) => WatchEvent::Deleted(o),
        KubeWatchEvent::Bookmark(b) => WatchEvent::Bookmark {
            initial_events_end: b
                .metadata
                .annotations
                .get(INITIAL_EVENTS_END_ANNOTATION)
                .is_some_and(|v| v == "true"),
            resource_version: b.metadata.resource_version,
        },
        KubeWatchEvent::Error(status) => WatchEvent::Error(from_kube_status(&status)),
    }
}

fn into_page<T: Clone>(list: ObjectList<T>) -> ListPage<T> {
    ListPage {
        items: list.items.into_iter().map(Arc::new).collect(),
        resource_version: list.metadata.resource_version.unwrap_or_default(),
        continue_token: list.metadata.continue_.filter(|c| !c.is_empty()),
        // kube's list parameters carry no shardSelector: the server never shards for this
        // source, and a sharded Reflector filters on the client.
        shard_info: None,
    }
}

impl<K> ListWatch<K> for kube::Api<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn list(&self, params: &ListParams) -> ListFuture<K> {
        let api = self.clone();
        let lp = to_kube_list(params);
        async move {
            let what = format!("list of {}", api.resource_url());
            api.list(&lp)
                .await
                .map(into_page)
                .map_err(|e| from_kube_error(e, &what))
        }
        .boxed()
    }

    fn watch(&self, params: &WatchParams) -> WatchFuture<K> {
        let api = self.clone();
        let wp = to_kube_watch(params);
        let rv = params.resource_version.clone();
        async move {
            let what = format!("watch of {} from {rv:?}", api.resource_url());
            let stream = api
                .watch(&wp, &rv)
                .await
                .map_err(|e| from_kube_error(e, &what))?;
            Ok(stream
                .map_ok(from_kube_event)
                .map_err(move |e| from_kube_watch_item_error(e, &what))
                .boxed())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.resource_url().to_owned()
    }
}

impl<K> ListWatch<PartialObjectMeta<K>> for MetadataOnly<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Send + Sync,
{
    fn list(&self, params: &ListParams) -> ListFuture<PartialObjectMeta<K>> {
        let api = self.0.clone();
        let lp = to_kube_list(params);
        async move {
            let what = format!("metadata list of {}", api.resource_url());
            api.list_metadata(&lp)
                .await
                .map(into_page)
                .map_err(|e| from_kube_error(e, &what))
        }
        .boxed()
    }

    fn watch(&self, params: &WatchParams) -> WatchFuture<PartialObjectMeta<K>> {
        let api = self.0.clone();
        let wp = to_kube_watch(params);
        let rv = params.resource_version.clone();
        async move {
            let what = format!("metadata watch of {} from {rv:?}", api.resource_url());
            let stream = api
                .watch_metadata(&wp, &rv)
                .await
                .map_err(|e| from_kube_error(e, &what))?;
            Ok(stream
                .map_ok(from_kube_event)
                .map_err(move |e| from_kube_watch_item_error(e, &what))
                .boxed())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("{} (metadata only)", self.0.resource_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_params_map_to_kube_query_fields() {
        let lp = to_kube_list(&ListParams {
            limit: Some(500),
            continue_token: None,
            resource_version: Some("42".into()),
            resource_version_match: Some(ResourceVersionMatch::NotOlderThan),
            label_selector: Some("app=web".into()),
            field_selector: Some("metadata.name=a".into()),
            shard_selector: None,
        });
        assert_eq!(lp.limit, Some(500));
        assert_eq!(lp.resource_version.as_deref(), Some("42"));
        assert_eq!(lp.version_match, Some(VersionMatch::NotOlderThan));
        assert_eq!(lp.label_selector.as_deref(), Some("app=web"));
        assert_eq!(lp.field_selector.as_deref(), Some("metadata.name=a"));
    }

    #[test]
    fn empty_resource_version_is_a_consistent_read_and_rv_zero_drops_the_limit() {
        let consistent = to_kube_list(&ListParams {
            limit: Some(500),
            resource_version: Some(String::new()),
            resource_version_match: Some(ResourceVersionMatch::NotOlderThan),
            ..Default::default()
        });
        assert_eq!(consistent.resource_version, None);
        assert_eq!(consistent.version_match, None);
        assert_eq!(consistent.limit, Some(500));
        let cached = to_kube_list(&ListParams {
            limit: Some(500),
            resource_version: Some("0".into()),
            ..Default::default()
        });
        assert_eq!(cached.resource_version.as_deref(), Some("0"));
        assert_eq!(cached.limit, None);
    }

    #[test]
    fn streaming_watch_forces_bookmarks() {
        let wp = to_kube_watch(&WatchParams {
            resource_version: String::new(),
            timeout_seconds: Some(400),
            allow_bookmarks: false,
            send_initial_events: true,
            label_selector: Some("a=b".into()),
            field_selector: None,
            shard_selector: None,
        });
        assert!(wp.bookmarks && wp.send_initial_events);
        assert_eq!(wp.timeout, Some(400));
        assert_eq!(wp.label_selector.as_deref(), Some("a=b"));
    }

    #[test]
    fn kube_errors_become_typed_source_errors() {
        let gone = kube::core::Status::failure("too old resource version: 1 (9)", "Expired");
        let mut gone = gone;
        gone.code = 410;
        assert!(from_kube_error(kube::Error::Api(Box::new(gone)), "w").is_expired());
        let bad = serde_json::from_str::<serde_json::Value>("{not json").unwrap_err();
        let err = from_kube_error(kube::Error::SerdeError(bad), "watch of pods");
        assert!(err.is_malformed());
        assert!(err.to_string().contains("watch of pods"));
    }

    #[test]
    fn a_watch_line_kube_read_as_a_codeless_status_is_malformed() {
        // kube's fallback for `{"type":"SURPRISE",...}`: every Status field is optional.
        let line = r#"{"type":"SURPRISE","object":{"kind":"Pod","metadata":{"name":"a"}}}"#;
        let status: kube::core::Status = serde_json::from_str(line).unwrap();
        let err = from_kube_watch_item_error(kube::Error::Api(Box::new(status)), "watch of pods");
        assert!(err.is_malformed(), "{err:?}");
        let mut real = kube::core::Status::failure("too old resource version", "Expired");
        real.code = 410;
        let err = from_kube_watch_item_error(kube::Error::Api(Box::new(real)), "watch of pods");
        assert!(err.is_expired() && !err.is_malformed(), "{err:?}");
    }

    #[test]
    fn initial_events_end_bookmark_is_recognised_only_when_true() {
        for (value, expected) in [("true", true), ("false", false)] {
            let json = serde_json::json!({
                "type": "BOOKMARK",
                "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {
                    "resourceVersion": "77",
                    "annotations": {INITIAL_EVENTS_END_ANNOTATION: value}
                }}
            });
            let ev: KubeWatchEvent<k8s_openapi::api::core::v1::Pod> =
                serde_json::from_value(json).unwrap();
            assert_eq!(
                from_kube_event(ev),
                WatchEvent::Bookmark {
                    resource_version: "77".into(),
                    initial_events_end: expected
                }
            );
        }
    }
}
