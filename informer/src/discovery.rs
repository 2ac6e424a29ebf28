//! Discovery with a disk cache, as client-go's `CachedDiscoveryClient` (and so kubectl) keeps one.
//!
//! # Why
//!
//! A dynamic informer needs its resource's group, version, plural and scope, which only the API
//! server's discovery documents say: `/api`, `/apis` and one resource list per group version, 30
//! to 100 requests on a real cluster. A process that starts often (a CLI, a controller that
//! restarts, a test suite) should not pay them every time, so, as client-go does, the documents
//! are kept on disk under `~/.kube/cache/discovery/<host>/` and trusted for 10 minutes
//! ([`DEFAULT_TTL`]). The layout is client-go's (`servergroups.json` is an `APIGroupList` with
//! the core group first under the name `""`, and `<group>/<version>/serverresources.json`, core
//! as `v1/serverresources.json`, an `APIResourceList`), so kubectl and Reflex share the cache.
//!
//! A cache can be stale: a CRD installed a minute ago is missing from it. As in client-go, a
//! name that the cache does not know invalidates it: [`CachedDiscovery::resolve`] then asks the
//! server once more before answering [`DiscoveryError::NotFound`]. A process that must not read
//! the disk (a test against a throwaway server) uses [`DiscoveryCache::Disabled`]: discovery then
//! goes to the server whenever the in-memory copy is older than the TTL.
//!
//! Files are written whole to a temporary name and renamed, so a reader never sees half a file;
//! a cache that cannot be read or written is logged and bypassed, never an error (the server is
//! the truth, the cache only saves requests).
//!
//! ```no_run
//! # async fn demo(config: kube::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use reflex_informer::discovery::{CachedDiscovery, DiscoveryOptions};
//! let client = kube::Client::try_from(config.clone())?;
//! let discovery = CachedDiscovery::new(client, &config.cluster_url, DiscoveryOptions::default());
//! let (resource, caps) = discovery.resolve("deployments.apps").await?;
//! println!("{} {:?}", resource.api_version, caps.scope);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResourceList, GroupVersionForDiscovery,
};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use parking_lot::Mutex;

/// How long cached discovery documents are trusted: client-go's 10 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// How many group versions are fetched at once on a refresh.
const CONCURRENT_FETCHES: usize = 8;

/// Where [`CachedDiscovery`] keeps its documents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DiscoveryCache {
    /// `$KUBECACHEDIR/discovery/<host>`, else `~/.kube/cache/discovery/<host>` (kubectl's).
    #[default]
    KubeDefault,
    /// `<dir>/<host>`: a cache of one's own (tests, a sandboxed process).
    Dir(PathBuf),
    /// No disk: documents are kept in memory for the TTL only.
    Disabled,
}

/// How [`CachedDiscovery`] caches.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Where documents are kept on disk.
    pub cache: DiscoveryCache,
    /// How long documents are trusted (from the time they were fetched).
    pub ttl: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            cache: DiscoveryCache::KubeDefault,
            ttl: DEFAULT_TTL,
        }
    }
}

/// Why discovery could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The API server refused or failed a discovery request.
    #[error("discovery request {path} failed: {source}")]
    Request {
        /// The discovery path (`/apis`, `/apis/apps/v1`).
        path: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// No served resource has this name, after a fresh look at the server.
    #[error("the server does not serve a resource named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
}

/// One group version's resources, as discovered.
#[derive(Debug, Clone)]
struct GroupVersionResources {
    group: String,
    version: String,
    preferred: bool,
    list: APIResourceList,
}

/// A whole discovery: every served group version.
#[derive(Debug)]
struct Snapshot {
    versions: Vec<GroupVersionResources>,
    fetched: SystemTime,
    /// Whether it came from the server in this process (else from the disk cache).
    from_server: bool,
}

/// Discovery with an on-disk and in-memory cache. See the [module docs](self).
#[derive(Clone)]
pub struct CachedDiscovery {
    client: kube::Client,
    dir: Option<PathBuf>,
    ttl: Duration,
    current: Arc<Mutex<Option<Arc<Snapshot>>>>,
}

impl std::fmt::Debug for CachedDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDiscovery")
            .field("dir", &self.dir)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The cache directory name of a server, as client-go computes it: the URL without its scheme,
/// every character other than a letter, digit, `_`, `/`, `.`, `(` or `)` replaced by `_`
/// (`https://127.0.0.1:6443` → `127.0.0.1_6443`).
pub fn host_dir_name(cluster_url: &http::Uri) -> String {
    let url = cluster_url.to_string();
    let schemeless = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(&url)
        .trim_end_matches('/');
    schemeless
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '(' | ')') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn kube_cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBECACHEDIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("cache"))
}

impl CachedDiscovery {
    /// Discovery of the server at `cluster_url` (the client's `Config::cluster_url`, which names
    /// the cache directory) through `client`.
    pub fn new(client: kube::Client, cluster_url: &http::Uri, options: DiscoveryOptions) -> Self {
        let host = host_dir_name(cluster_url);
        let dir = match options.cache {
            DiscoveryCache::KubeDefault => {
                kube_cache_root().map(|root| root.join("discovery").join(&host))
            }
            DiscoveryCache::Dir(dir) => Some(dir.join(&host)),
            DiscoveryCache::Disabled => None,
        };
        CachedDiscovery {
            client,
            dir,
            ttl: options.ttl,
            current: Arc::default(),
        }
    }

    /// The directory documents are cached in, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The served resource `name` names, in its group's preferred version, and what it can do.
    ///
    /// `name` is what kubectl accepts: a plural (`deployments`), a plural with its group
    /// (`deployments.apps`), a plural with version and group (`deployments.v1.apps`), a kind
    /// (`Deployment`, any case), a singular or a short name (`deploy`). The core group wins a tie,
    /// as in kubectl. A name the cached documents do not know is looked up once more on the
    /// server before [`DiscoveryError::NotFound`].
    pub async fn resolve(
        &self,
        name: &str,
    ) -> Result<(ApiResource, ApiCapabilities), DiscoveryError> {
        let snapshot = self.snapshot().await?;
        if let Some(found) = find(&snapshot, name) {
            return Ok(found);
        }
        if !snapshot.from_server {
            tracing::debug!(name, "not in the discovery cache; asking the server");
            let fresh = self.refresh().await?;
            if let Some(found) = find(&fresh, name) {
                return Ok(found);
            }
        }
        Err(DiscoveryError::NotFound {
            name: name.to_owned(),
        })
    }

    /// Every served resource in its group's preferred version (subresources as capabilities).
    pub async fn resources(&self) -> Result<Vec<(ApiResource, ApiCapabilities)>, DiscoveryError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot
            .versions
            .iter()
            .filter(|gv| gv.preferred)
            .flat_map(resources_of)
            .collect())
    }

    /// Forgets the cached documents (memory and disk): the next call asks the server.
    pub fn invalidate(&self) {
        *self.current.lock() = None;
        if let Some(dir) = &self.dir {
            // Only the groups file: without it the cache is a miss, and the next refresh
            // rewrites every file.
            let _ = std::fs::remove_file(dir.join("servergroups.json"));
        }
    }

    /// The freshest snapshot within the TTL: memory, then disk, then the server.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, DiscoveryError> {
        let now = SystemTime::now();
        let fresh = |s: &Snapshot| now.duration_since(s.fetched).unwrap_or_default() < self.ttl;
        if let Some(s) = self.current.lock().as_ref()
            && fresh(s)
        {
            return Ok(s.clone());
        }
        if let Some(dir) = &self.dir
            && let Some(s) = read_cache(dir)
            && fresh(&s)
        {
            tracing::debug!(dir = %dir.display(), "discovery from the disk cache");
            let s = Arc::new(s);
            *self.current.lock() = Some(s.clone());
            return Ok(s);
        }
        self.refresh().await
    }

    /// Fetches every document from the server, keeps it in memory and writes it to disk.
    async fn refresh(&self) -> Result<Arc<Snapshot>, DiscoveryError> {
        let groups = self.fetch_groups().await?;
        let wanted: Vec<(String, GroupVersionForDiscovery, bool)> = groups
            .groups
            .iter()
            .flat_map(|g| {
                let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
                g.versions.iter().map(move |v| {
                    let is_preferred = preferred.as_deref().map_or(
                        g.versions.first().map(|f| &f.version) == Some(&v.version),
                        |p| p == v.version,
                    );
                    (g.name.clone(), v.clone(), is_preferred)
                })
            })
            .collect();
        let client = &self.client;
        let versions: Vec<GroupVersionResources> = futures::stream::iter(wanted)
            .map(|(group, gv, preferred)| async move {
                let list = if group.is_empty() {
                    client.list_core_api_resources(&gv.version).await
                } else {
                    client.list_api_group_resources(&gv.group_version).await
                };
                let list = list.map_err(|source| DiscoveryError::Request {
                    path: discovery_path(&group, &gv.version),
                    source,
                })?;
                Ok::<_, DiscoveryError>(GroupVersionResources {
                    group,
                    version: gv.version,
                    preferred,
                    list,
                })
            })
            .buffered(CONCURRENT_FETCHES)
            .try_collect()
            .await?;
        tracing::debug!(group_versions = versions.len(), "discovery from the server");
        if let Some(dir) = &self.dir
            && let Err(error) = write_cache(dir, &groups, &versions)
        {
            tracing::warn!(dir = %dir.display(), %error, "cannot write the discovery cache");
        }
        let snapshot = Arc::new(Snapshot {
            versions,
            fetched: SystemTime::now(),
            from_server: true,
        });
        *self.current.lock() = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// `/api` and `/apis` as one `APIGroupList`, the core group first under the name `""`.
    async fn fetch_groups(&self) -> Result<APIGroupList, DiscoveryError> {
        let core = self
            .client
            .list_core_api_versions()
            .await
            .map_err(|source| DiscoveryError::Request {
                path: "/api".to_owned(),
                source,
            })?;
        let mut groups =
            self.client
                .list_api_groups()
                .await
                .map_err(|source| DiscoveryError::Request {
                    path: "/apis".to_owned(),
                    source,
                })?;
        let versions: Vec<GroupVersionForDiscovery> = core
            .versions
            .iter()
            .map(|v| GroupVersionForDiscovery {
                group_version: v.clone(),
                version: v.clone(),
            })
            .collect();
        groups.groups.insert(
            0,
            APIGroup {
                name: String::new(),
                preferred_version: versions.first().cloned(),
                server_address_by_client_cidrs: None,
                versions,
            },
        );
        Ok(groups)
    }
}

fn discovery_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

fn resource_file(dir: &Path, group: &str, version: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    if !group.is_empty() {
        path.push(group);
    }
    path.push(version);
    path.push("serverresources.json");
    path
}

/// The cached snapshot under `dir`, dated by its groups file; `None` when absent or unreadable
/// (a partial or corrupt cache is a miss).
fn read_cache(dir: &Path) -> Option<Snapshot> {
    let groups_path = dir.join("servergroups.json");
    let fetched = std::fs::metadata(&groups_path).ok()?.modified().ok()?;
    let read = |path: &Path| -> Option<Vec<u8>> {
        std::fs::read(path)
            .map_err(
                |error| tracing::debug!(path = %path.display(), %error, "discovery cache miss"),
            )
            .ok()
    };
    let groups: APIGroupList = serde_json::from_slice(&read(&groups_path)?)
        .map_err(|error| tracing::warn!(path = %groups_path.display(), %error, "corrupt discovery cache"))
        .ok()?;
    let mut versions = Vec::new();
    for group in &groups.groups {
        let preferred = group.preferred_version.as_ref().map(|p| p.version.as_str());
        for gv in &group.versions {
            let path = resource_file(dir, &group.name, &gv.version);
            let list: APIResourceList = serde_json::from_slice(&read(&path)?)
                .map_err(|error| tracing::warn!(path = %path.display(), %error, "corrupt discovery cache"))
                .ok()?;
            versions.push(GroupVersionResources {
                group: group.name.clone(),
                version: gv.version.clone(),
                preferred: preferred.map_or(
                    group.versions.first().map(|f| &f.version) == Some(&gv.version),
                    |p| p == gv.version,
                ),
                list,
            });
        }
    }
    Some(Snapshot {
        versions,
        fetched,
        from_server: false,
    })
}

/// Writes every resource file, then the groups file (which dates the cache, so a cache whose
/// groups file exists is whole).
fn write_cache(
    dir: &Path,
    groups: &APIGroupList,
    versions: &[GroupVersionResources],
) -> std::io::Result<()> {
    for gv in versions {
        let path = resource_file(dir, &gv.group, &gv.version);
        write_whole(&path, &serde_json::to_vec(&gv.list)?)?;
    }
    write_whole(&dir.join("servergroups.json"), &serde_json::to_vec(groups)?)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The top-level resources of one group version, each with its subresources.
fn resources_of(gv: &GroupVersionResources) -> Vec<(ApiResource, ApiCapabilities)> {
    let api_version = if gv.group.is_empty() {
        gv.version.clone()
    } else {
        format!("{}/{}", gv.group, gv.version)
    };
    let make = |r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource, plural: &str| {
        let resource = ApiResource {
            group: r.group.clone().unwrap_or_else(|| gv.group.clone()),
            version: r.version.clone().unwrap_or_else(|| gv.version.clone()),
            api_version: api_version.clone(),
            kind: r.kind.clone(),
            plural: plural.to_owned(),
        };
        let caps = ApiCapabilities {
            scope: if r.namespaced {
                Scope::Namespaced
            } else {
                Scope::Cluster
            },
            subresources: Vec::new(),
            operations: r.verbs.clone(),
        };
        (resource, caps)
    };
    let mut out: Vec<(ApiResource, ApiCapabilities)> = gv
        .list
        .resources
        .iter()
        .filter(|r| !r.name.contains('/'))
        .map(|r| make(r, &r.name))
        .collect();
    for sub in gv.list.resources.iter().filter(|r| r.name.contains('/')) {
        let Some((parent, name)) = sub.name.split_once('/') else {
            continue;
        };
        if let Some((_, caps)) = out.iter_mut().find(|(r, _)| r.plural == parent) {
            caps.subresources.push(make(sub, name));
        }
    }
    out
}

/// Whether `name` names `resource` of group version `gv` (see [`CachedDiscovery::resolve`]).
fn names(
    name: &str,
    gv: &GroupVersionResources,
    resource: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource,
) -> bool {
    let plural = resource.name.as_str();
    if name == plural
        || name.eq_ignore_ascii_case(&resource.kind)
        || (!resource.singular_name.is_empty() && name == resource.singular_name)
        || resource
            .short_names
            .iter()
            .flatten()
            .any(|short| short == name)
    {
        return gv.preferred;
    }
    match name.split_once('.') {
        Some((p, rest)) if p == plural => {
            (rest == gv.group && gv.preferred)
                || rest
                    .split_once('.')
                    .is_some_and(|(v, g)| v == gv.version && g == gv.group)
        }
        _ => false,
    }
}

fn find(snapshot: &Snapshot, name: &str) -> Option<(ApiResource, ApiCapabilities)> {
    // The core group is first (see `fetch_groups`), so it wins a tie.
    for gv in &snapshot.versions {
        if let Some(r) = gv
            .list
            .resources
            .iter()
            .find(|r| !r.name.contains('/') && names(name, gv, r))
        {
            return resources_of(gv)
                .into_iter()
                .find(|(ar, _)| ar.plural == r.name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dirs_are_named_as_client_go_names_them() {
        let url: http::Uri = "https://127.0.0.1:6443".parse().unwrap();
        assert_eq!(host_dir_name(&url), "127.0.0.1_6443");
        let url: http::Uri = "https://api.example.com/prefix/".parse().unwrap();
        assert_eq!(host_dir_name(&url), "api.example.com/prefix");
    }
}
