//! The contender table: every (workload, contender) the harness runs, in the order of the
//! printed table. Adding a row (a new store mode, a new peer) is one entry here plus its
//! function.

use futures::future::BoxFuture;

use crate::Params;
use crate::protocol::Figures;

/// What a Rust contender returns: its figures and whatever must stay alive (the informer and
/// its store) while the harness reads the process's peak memory.
pub type Run = Result<(Figures, Keep), String>;

/// Kept alive until the harness has read the peak memory.
pub type Keep = Box<dyn std::any::Any + Send>;

/// A Rust contender, run inside a child process on a two-thread tokio runtime.
pub type RustFn = fn(Params) -> BoxFuture<'static, Run>;

/// The workloads of issue 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// List and watch N Pods until synced: time and peak memory.
    Sync,
    /// Updates streamed at a fixed rate to an informer with 4 handlers enqueueing into a
    /// rate-limited queue: latency.
    Steady,
    /// The same contenders with the updates written as fast as the server takes them: the
    /// events per second a contender sustains.
    Burst,
    /// add/get/done over 10k keys with 50% duplicates at 1, 2 and 8 workers.
    Workqueue,
    /// The same over 1M keys (100k in quick mode) at 8 and 1,000 workers.
    WorkqueueScale,
    /// Cache get and list-by-namespace with a concurrent writer.
    Reads,
    /// Sharded controllers: one replica of three beside one that does it all, and a hand-off.
    Shard,
    /// The initial sync against envtest's real kube-apiserver (see [`crate::envtest`]).
    SyncEnvtest,
}

/// Whether a figure is better when higher or when lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughputs.
    Higher,
    /// Times and memory.
    Lower,
}

/// One printed figure of a workload.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Key in the figures.
    pub key: &'static str,
    /// Heading.
    pub label: &'static str,
    /// Direction.
    pub better: Better,
}

const fn col(key: &'static str, label: &'static str, better: Better) -> Column {
    Column { key, label, better }
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Workload; 8] = [
        Workload::Sync,
        Workload::Steady,
        Workload::Burst,
        Workload::Workqueue,
        Workload::WorkqueueScale,
        Workload::Reads,
        Workload::Shard,
        Workload::SyncEnvtest,
    ];

    /// The name used by `--only` and in the child flags.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Sync => "sync",
            Workload::Steady => "steady",
            Workload::Burst => "burst",
            Workload::Workqueue => "workqueue",
            Workload::WorkqueueScale => "workqueue-scale",
            Workload::Reads => "reads",
            Workload::Shard => "shard",
            Workload::SyncEnvtest => "sync-envtest",
        }
    }

    /// Parses a `--only` value: one workload, except `workqueue`, which also selects its
    /// scale rows.
    pub fn parse(s: &str) -> Option<Vec<Workload>> {
        if s == "workqueue" {
            return Some(vec![Workload::Workqueue, Workload::WorkqueueScale]);
        }
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .map(|w| vec![w])
    }

    /// The figures printed for this workload (peak memory is added to each by the harness).
    pub fn columns(self) -> &'static [Column] {
        match self {
            Workload::Sync => SYNC_COLUMNS,
            Workload::Steady => STEADY_COLUMNS,
            Workload::Burst => BURST_COLUMNS,
            Workload::Workqueue => QUEUE_COLUMNS,
            Workload::WorkqueueScale => QUEUE_SCALE_COLUMNS,
            Workload::Reads => READ_COLUMNS,
            Workload::Shard => SHARD_COLUMNS,
            Workload::SyncEnvtest => ENVTEST_COLUMNS,
        }
    }
}

const SYNC_COLUMNS: &[Column] = &[
    col("synced_s", "time to synced (s)", Better::Lower),
    col("peak_rss_mib", "peak RSS (MiB)", Better::Lower),
    col("kib_per_object", "KiB/Pod", Better::Lower),
    col("wire_mib", "MiB from server", Better::Lower),
    col("peak_over_synced", "peak/synced RSS", Better::Lower),
    col("relist_s", "relist (s)", Better::Lower),
    col(
        "relist_peak_over_synced",
        "relist peak/synced",
        Better::Lower,
    ),
];
const ENVTEST_COLUMNS: &[Column] = &[
    col("synced_s", "time to synced (s)", Better::Lower),
    col("peak_rss_mib", "peak RSS (MiB)", Better::Lower),
    col("kib_per_object", "KiB/Pod", Better::Lower),
    col("body_mib", "MiB decoded", Better::Lower),
    col("protobuf_responses", "protobuf responses", Better::Higher),
];
const STEADY_COLUMNS: &[Column] = &[
    col("events_per_s", "events/s", Better::Higher),
    col("p50_ms", "p50 (ms)", Better::Lower),
    col("p99_ms", "p99 (ms)", Better::Lower),
];
const BURST_COLUMNS: &[Column] = &[
    col("events_per_s", "events/s", Better::Higher),
    col("writer_per_s", "writer writes/s", Better::Higher),
    col("events", "events seen", Better::Higher),
];
const QUEUE_COLUMNS: &[Column] = &[
    col("w1_adds_per_s", "1 worker (adds/s)", Better::Higher),
    col("w2_adds_per_s", "2 workers", Better::Higher),
    col("w8_adds_per_s", "8 workers", Better::Higher),
];
const QUEUE_SCALE_COLUMNS: &[Column] = &[
    col("w8_adds_per_s", "8 workers (adds/s)", Better::Higher),
    col("w1000_adds_per_s", "1000 workers", Better::Higher),
    col("w1000_over_w8", "1000 / 8 workers", Better::Higher),
];
const READ_COLUMNS: &[Column] = &[
    col("get_per_s_10k", "get/s 10k", Better::Higher),
    col("reader_get_per_s_10k", "Reader get/s 10k", Better::Higher),
    col("list_ns_per_s_10k", "list by ns/s 10k", Better::Higher),
    col("get_per_s", "get/s", Better::Higher),
    col("reader_get_per_s", "Reader get/s", Better::Higher),
    col("list_ns_per_s", "list by ns/s", Better::Higher),
];

const SHARD_COLUMNS: &[Column] = &[
    col("synced_s", "time to reconciling (s)", Better::Lower),
    col("objects", "objects cached", Better::Lower),
    col("reconciles", "reconciles", Better::Lower),
    col("slots", "slots held", Better::Lower),
    col("peak_rss_mib", "peak RSS (MiB)", Better::Lower),
    col("handoff_s", "hand-off (s)", Better::Lower),
    col("moved", "objects moved", Better::Lower),
];

/// How a contender runs.
#[derive(Clone, Copy)]
pub enum Runner {
    /// This binary, re-executed with `--contender`.
    Rust(RustFn),
    /// The client-go peer binary, with `--workload` and these further flags.
    Go(&'static [&'static str]),
}

/// One row of the table.
#[derive(Clone, Copy)]
pub struct Contender {
    /// Workload.
    pub workload: Workload,
    /// Name, unique within the workload.
    pub name: &'static str,
    /// The row the ratios are taken against (one per workload).
    pub reference: bool,
    /// How it runs.
    pub runner: Runner,
    /// One line on what exactly runs.
    pub about: &'static str,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

impl Contender {
    /// `workload/name`, the value of the hidden `--contender` flag.
    pub fn id(&self) -> String {
        format!("{}/{}", self.workload.name(), self.name)
    }
}

macro_rules! rust {
    ($f:expr) => {
        Runner::Rust(|p| Box::pin($f(p)))
    };
}

/// The table. Issue 9's store modes ("projected", "compact") are further `Sync` rows.
pub static CONTENDERS: &[Contender] = &[
    Contender {
        workload: Workload::Sync,
        name: "server floor (pages of 500)",
        reference: false,
        runner: rust!(crate::sync::server_floor_paged),
        about: "the fake server's list in pages of 500 to a client that discards the bytes",
    },
    Contender {
        workload: Workload::Sync,
        name: "server floor (one list)",
        reference: false,
        runner: rust!(crate::sync::server_floor_whole),
        about: "the fake server's whole list in one response to a client that discards the bytes",
    },
    Contender {
        workload: Workload::Sync,
        name: "serde_json decode (floor)",
        reference: false,
        runner: rust!(crate::sync::decode_floor),
        about: "serde_json into k8s_openapi Pods, pages of 500, only decode time counted",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex",
        reference: true,
        runner: rust!(crate::sync::reflex_default),
        about: "factory informer: a streaming list over gzip, managedFields skipped while parsing (the defaults)",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, paged list",
        reference: false,
        runner: rust!(crate::sync::reflex_paged),
        about: "factory informer listing in pages of 500 (streaming_lists: false), managedFields skipped",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, one list response",
        reference: false,
        runner: rust!(crate::sync::reflex_whole),
        about: "factory informer listing in one response (page_size: Some(0)), as every relist from a resourceVersion is served",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, gzip off",
        reference: false,
        runner: rust!(crate::sync::reflex_identity),
        about: "factory informer with WireOptions::identity(): uncompressed lists (kube-runtime's wire)",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, managedFields kept",
        reference: false,
        runner: rust!(crate::sync::reflex_full),
        about: "factory informer with DecodeOptions::full()",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, transform drops managedFields",
        reference: false,
        runner: rust!(crate::sync::reflex_transform),
        about: "full decode, then a transform clearing managedFields before the store",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, metadata-only",
        reference: false,
        runner: rust!(crate::sync::reflex_metadata),
        about: "InformerSpec::<PartialObjectMeta<Pod>>::metadata()",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, projected",
        reference: false,
        runner: rust!(crate::sync::reflex_projected),
        about: "informer::<PodPlacement>(), a projection (metadata, nodeName, phase)",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, compact store",
        reference: false,
        runner: rust!(crate::sync::reflex_compact),
        about: "InformerSpec::<Pod>::typed().compact() (LZ4-compressed JSON, decoded on read)",
    },
    Contender {
        workload: Workload::Sync,
        name: "reflex, metadata-only, compact store",
        reference: false,
        runner: rust!(crate::sync::reflex_compact_metadata),
        about: "InformerSpec::<PartialObjectMeta<Pod>>::metadata().compact() (LZ4)",
    },
    Contender {
        workload: Workload::Sync,
        name: "kube-runtime reflector",
        reference: false,
        runner: rust!(crate::sync::kube_runtime),
        about: "kube_runtime::reflector(store, watcher(Api::all, Config::default()))",
    },
    Contender {
        workload: Workload::Sync,
        name: "client-go informer",
        reference: false,
        runner: Runner::Go(&[]),
        about: "SharedInformerFactory Pod informer, WaitForCacheSync",
    },
    Contender {
        workload: Workload::Steady,
        name: "reflex",
        reference: true,
        runner: rust!(crate::steady::reflex),
        about: "informer, 4 handlers adding keys to a RateLimitingQueue, 1 worker draining it",
    },
    Contender {
        workload: Workload::Steady,
        name: "kube-runtime Controller",
        reference: false,
        runner: rust!(crate::steady::kube_runtime),
        about: "Controller::new(Api::namespaced).run: latency at reconcile (its trigger path)",
    },
    Contender {
        workload: Workload::Steady,
        name: "client-go informer",
        reference: false,
        runner: Runner::Go(&[]),
        about: "informer, 4 handlers adding keys to a TypedRateLimitingQueue, 1 worker",
    },
    Contender {
        workload: Workload::Burst,
        name: "reflex",
        reference: true,
        runner: rust!(crate::steady::reflex),
        about: "as in steady, updates written unpaced",
    },
    Contender {
        workload: Workload::Burst,
        name: "kube-runtime Controller",
        reference: false,
        runner: rust!(crate::steady::kube_runtime),
        about: "as in steady, updates written unpaced (reconciles coalesce updates)",
    },
    Contender {
        workload: Workload::Burst,
        name: "client-go informer",
        reference: false,
        runner: Runner::Go(&[]),
        about: "as in steady, updates written unpaced",
    },
    Contender {
        workload: Workload::Workqueue,
        name: "reflex Queue",
        reference: true,
        runner: rust!(crate::queue::reflex),
        about: "reflex_workqueue::Queue, worker tasks on 2 threads",
    },
    Contender {
        workload: Workload::Workqueue,
        name: "reflex PriorityQueue, one priority",
        reference: false,
        runner: rust!(crate::queue::reflex_priority_one),
        about: "reflex_workqueue::PriorityQueue (aging on), every add at priority 0",
    },
    Contender {
        workload: Workload::Workqueue,
        name: "reflex PriorityQueue, priorities -1/0/1",
        reference: false,
        runner: rust!(crate::queue::reflex_priority_mixed),
        about: "reflex_workqueue::PriorityQueue (aging on), a third of the keys at each of -1, 0, 1",
    },
    Contender {
        workload: Workload::Workqueue,
        name: "kube-runtime scheduler",
        reference: false,
        runner: rust!(crate::queue::kube_runtime),
        about: "kube_runtime::scheduler fed every add, one consumer (no workers: 1 only)",
    },
    Contender {
        workload: Workload::Workqueue,
        name: "client-go workqueue",
        reference: false,
        runner: Runner::Go(&[]),
        about: "workqueue.NewTyped[int], worker goroutines, GOMAXPROCS=2",
    },
    Contender {
        workload: Workload::WorkqueueScale,
        name: "reflex Queue, 1M keys (100k in --quick)",
        reference: true,
        runner: rust!(crate::queue::reflex_scale),
        about: "reflex_workqueue::Queue, 2M adds over 1M keys, 8 and 1000 worker tasks on 2 threads",
    },
    Contender {
        workload: Workload::WorkqueueScale,
        name: "client-go workqueue, 1M keys (100k in --quick)",
        reference: false,
        runner: Runner::Go(&[]),
        about: "workqueue.NewTyped[int], 2M adds over 1M keys, 8 and 1000 goroutines, GOMAXPROCS=2",
    },
    Contender {
        workload: Workload::Reads,
        name: "reflex Indexer",
        reference: true,
        runner: rust!(crate::reads::reflex),
        about: "Indexer get_by_key (owned Arc), Reader::get (lent), by_index(namespace)",
    },
    Contender {
        workload: Workload::Reads,
        name: "kube-runtime Store",
        reference: false,
        runner: rust!(crate::reads::kube_runtime),
        about: "Store::get and state_filter by namespace (a scan)",
    },
    Contender {
        workload: Workload::Reads,
        name: "client-go indexer",
        reference: false,
        runner: Runner::Go(&[]),
        about: "cache.NewIndexer GetByKey and ByIndex(namespace)",
    },
    Contender {
        workload: Workload::Shard,
        name: "reflex, one replica",
        reference: true,
        runner: rust!(crate::shard::one_replica),
        about: "one member of a 16-slot group: holds every slot, caches and reconciles every Pod",
    },
    Contender {
        workload: Workload::Shard,
        name: "reflex, 1 of 3 replicas",
        reference: false,
        runner: rust!(crate::shard::one_of_three),
        about: "one of three members (server-side shardSelector): caches and reconciles its slots only",
    },
    Contender {
        workload: Workload::Shard,
        name: "reflex, hand-off of a third",
        reference: false,
        runner: rust!(crate::shard::handoff),
        about: "three replicas in one process; one leaves: time until its slots reconcile on the two left",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "serde_json decode (floor)",
        reference: false,
        runner: rust!(crate::envtest::json_floor),
        about: "the real server's JSON pages of 500, serde_json into k8s_openapi Pods; only decode time counted",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "reflex decoder (floor)",
        reference: false,
        runner: rust!(crate::envtest::reflex_decoder_floor),
        about: "the same JSON pages through Reflex's decoder (managedFields skipped); only decode time counted",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "protobuf decode, k8s-pb (floor)",
        reference: false,
        runner: rust!(crate::envtest::protobuf_floor),
        about: "the same pages in protobuf, prost into k8s-pb's PodList (no conversion); only decode time counted",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "metadata JSON, reflex decoder (floor)",
        reference: false,
        runner: rust!(crate::envtest::json_metadata_floor),
        about: "PartialObjectMetadataList pages in JSON through Reflex's decoder; only decode time counted",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "metadata protobuf, k8s-pb into k8s_openapi (floor)",
        reference: false,
        runner: rust!(crate::envtest::protobuf_metadata_floor),
        about: "PartialObjectMetadataList pages in protobuf, prost then ObjectMeta converted; only decode time counted",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "reflex",
        reference: true,
        runner: rust!(crate::sync::reflex_default),
        about: "factory informer with the defaults (streaming list, gzip, managedFields skipped)",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "reflex, paged list",
        reference: false,
        runner: rust!(crate::sync::reflex_paged),
        about: "factory informer listing in pages of 500 (streaming_lists: false), managedFields skipped",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "reflex, metadata-only",
        reference: false,
        runner: rust!(crate::sync::reflex_metadata),
        about: "InformerSpec::<PartialObjectMeta<Pod>>::metadata()",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "reflex, projected",
        reference: false,
        runner: rust!(crate::sync::reflex_projected),
        about: "informer::<PodPlacement>() (metadata, nodeName, phase)",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "kube-runtime reflector",
        reference: false,
        runner: rust!(crate::sync::kube_runtime),
        about: "kube_runtime::reflector(store, watcher(Api::all, Config::default()))",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "client-go informer (JSON)",
        reference: false,
        runner: Runner::Go(&["--content-type", "json"]),
        about: "SharedInformerFactory Pod informer, ContentType application/json",
    },
    Contender {
        workload: Workload::SyncEnvtest,
        name: "client-go informer (protobuf)",
        reference: false,
        runner: Runner::Go(&["--content-type", "protobuf"]),
        about: "the same with ContentType application/vnd.kubernetes.protobuf (kube-controller-manager's)",
    },
];

/// The contender with this `workload/name` id.
pub fn find(id: &str) -> Option<&'static Contender> {
    CONTENDERS.iter().find(|c| c.id() == id)
}
