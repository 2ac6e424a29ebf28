//! The resourceVersion propagation rule for watches started at `""`/`"0"`: their synthetic
//! `ADDED` events come in no resourceVersion order, so the Reflector does not advance its
//! resourceVersion until the first event that is not `ADDED`.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use parking_lot::Mutex;
use reflex_informer::fifo::{FifoError, ReflectorSink};
use reflex_informer::reflector::{Reflector, ReflectorOptions};
use reflex_informer::source::{
    ListFuture, ListPage, ListParams, ListWatch, WatchEvent, WatchFuture, WatchParams,
};
use tokio_util::sync::CancellationToken;

/// A list with no resourceVersion, then one scripted watch that stays open.
struct Scripted {
    events: Mutex<Option<Vec<WatchEvent<ConfigMap>>>>,
}

impl ListWatch<ConfigMap> for Scripted {
    fn list(&self, _: &ListParams) -> ListFuture<ConfigMap> {
        futures::future::ready(Ok(ListPage {
            items: Vec::new(),
            resource_version: String::new(),
            continue_token: None,
            shard_info: None,
        }))
        .boxed()
    }
    fn watch(&self, _: &WatchParams) -> WatchFuture<ConfigMap> {
        let events = self.events.lock().take().unwrap_or_default();
        let stream =
            futures::stream::iter(events.into_iter().map(Ok)).chain(futures::stream::pending());
        futures::future::ready(Ok(stream.boxed())).boxed()
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
}

/// Records the reflector's rv after each call, as seen through the handle it was given.
struct Progress(
    Mutex<Vec<String>>,
    Mutex<Option<reflex_informer::reflector::ReflectorHandle>>,
);

impl Progress {
    fn note(&self) {
        if let Some(h) = &*self.1.lock() {
            self.0.lock().push(h.last_sync_resource_version());
        }
    }
}

impl ReflectorSink<ConfigMap> for Progress {
    fn add(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> {
        self.note();
        Ok(())
    }
    fn update(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> {
        self.note();
        Ok(())
    }
    fn delete(&self, _: Arc<ConfigMap>) -> Result<(), FifoError> {
        self.note();
        Ok(())
    }
    fn replace_begin(&self) {}
    fn replace_page(&self, _: Vec<Arc<ConfigMap>>) -> Result<(), FifoError> {
        Ok(())
    }
    fn replace_done(&self, _: &str) -> Result<(), FifoError> {
        Ok(())
    }
}

fn cm(name: &str, rv: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn synthetic_adds_do_not_advance_the_rv_until_the_first_other_event() {
    let source = Scripted {
        events: Mutex::new(Some(vec![
            WatchEvent::Added(cm("b", "9")),
            WatchEvent::Added(cm("a", "5")),
            WatchEvent::Modified(cm("a", "10")),
            WatchEvent::Added(cm("c", "11")),
            WatchEvent::Added(cm("d", "12")),
        ])),
    };
    let sink = Arc::new(Progress(Mutex::new(Vec::new()), Mutex::new(None)));
    // The script is a list then a plain watch (it ignores sendInitialEvents, as no server
    // this crate supports does): the paged path.
    let options = ReflectorOptions {
        streaming_lists: false,
        ..ReflectorOptions::default()
    };
    let reflector = Reflector::new(Arc::new(source), sink.clone(), options);
    let handle = reflector.handle();
    *sink.1.lock() = Some(handle.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reflector.run(shutdown.clone()));
    while handle.last_sync_resource_version() != "12" {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The rv observed when each event reached the sink (before it was recorded).
    assert_eq!(*sink.0.lock(), ["", "", "", "10", "11"]);
    shutdown.cancel();
    task.await.unwrap();
}
