//! What the mock server's handlers share: its settings, the idempotency store, the
//! fault plan, the request log and the counters read back by tests.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use http::HeaderName;

use super::fault::{Fault, Faults, RandomFaults};
use super::log::{Entry, Log};
use super::route::Compiled;
use super::store::{Begin, ScopedKey, Store, Stored};
use super::{MockError, ReceivedRequest, Stats};

/// The routes, tried in order; replaced whole when one is added at run time, so a
/// request keeps the list it started with.
pub(crate) type Routes = Arc<Vec<Arc<Compiled>>>;

/// Settings fixed when the server starts.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) require_key: bool,
    pub(crate) retry_after_dates: bool,
    pub(crate) key_ttl: Duration,
    pub(crate) processing_delay: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_keys: usize,
    pub(crate) max_log: usize,
    pub(crate) max_log_bytes: usize,
    pub(crate) log_credentials: bool,
    pub(crate) key_header: HeaderName,
    /// The header whose value scopes keys and created resources.
    pub(crate) scope_header: HeaderName,
    /// Seeds the ids routes draw and their fault plans.
    pub(crate) seed: u64,
    /// One line per request on standard error.
    pub(crate) log_requests: bool,
    /// Required on `/__admin/*` when set.
    pub(crate) admin_token: Option<super::auth::AdminToken>,
    /// Proxy mode: the server every request is forwarded to.
    pub(crate) upstream: Option<super::upstream::Upstream>,
}

/// Read-back data beyond the store: the request log and the keys that executed twice.
#[derive(Debug)]
struct Book {
    log: Log,
    /// Key → executions and the scopes they ran in, for keys that executed more than
    /// once (in one scope, or across scopes). Empty when idempotency held; capped at
    /// [`MAX_DUPLICATES`] keys so hostile input cannot grow it forever.
    duplicates: BTreeMap<String, super::Duplicate>,
}

/// Where an operation creates its resource: the path it was sent to, in its caller's
/// scope (the `Authorization` value).
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) scope: Option<Bytes>,
    pub(crate) path: String,
}

/// The id of a resource an operation created, for read-back.
#[derive(Debug)]
pub(crate) enum CreatedId {
    /// The built-in answer's numeric id.
    Number(u64),
    /// A route's answer's top-level `id`.
    Text(String),
}

impl std::fmt::Display for CreatedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// What an operation made: its answer to store and the id of what it created; or an
/// answer to send without storing, when it could not run.
pub(crate) type Performed = Result<(Stored, Option<CreatedId>), Stored>;

/// Created resources for read-back, bounded like the key store (oldest first out).
/// The map and the queue share each key.
#[derive(Debug, Default)]
struct Resources {
    map: HashMap<Arc<(Option<Bytes>, String)>, Arc<Stored>>,
    order: VecDeque<Arc<(Option<Bytes>, String)>>,
}

/// Most distinct duplicate keys remembered (there should be none).
const MAX_DUPLICATES: usize = 10_000;

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The caller's API; empty: the built-in answer.
    routes: RwLock<Routes>,
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    book: Mutex<Book>,
    resources: Mutex<Resources>,
    executions: AtomicU64,
    requests: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
    mismatches: AtomicU64,
    next_id: AtomicU64,
    /// The outage in force, if any.
    pub(crate) outage: super::outage::OutageWindow,
    /// The share of requests that stall before processing, if any.
    pub(crate) stalls: super::stall::Stalls,
    /// Proxy mode: what the upstream did with each key.
    key_book: Mutex<super::keys::KeyBook>,
}

/// Locks, recovering the data if a panicking thread poisoned the lock: every critical
/// section here leaves the data consistent, so a poison flag carries no information.
/// A scope as read-back shows it: never the credential itself, only its scheme (the
/// first word, when it has one) and a short digest, enough to tell two apart.
pub(crate) fn scope_label(scope: Option<&Bytes>) -> String {
    let Some(scope) = scope else {
        return "(no scope header)".into();
    };
    let digest = super::keys::digest(scope);
    let digest = digest.get(..8).unwrap_or(&digest);
    let scheme = std::str::from_utf8(scope)
        .ok()
        .and_then(|s| s.split_once(' '))
        .map(|(scheme, _)| scheme)
        .filter(|s| s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    match scheme {
        Some(scheme) => format!("{scheme} #{digest}"),
        None => format!("#{digest}"),
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config, faults: Faults, routes: Vec<Compiled>) -> Self {
        let log = Log::new(config.max_log, config.max_log_bytes, config.log_credentials);
        let stalls = super::stall::Stalls::new(config.seed);
        let max_keys = config.max_keys;
        Self {
            store: Mutex::new(Store::new(config.key_ttl, config.max_keys)),
            config,
            routes: RwLock::new(Arc::new(routes.into_iter().map(Arc::new).collect())),
            faults: Mutex::new(faults),
            book: Mutex::new(Book {
                log,
                duplicates: BTreeMap::new(),
            }),
            resources: Mutex::default(),
            executions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            outage: super::outage::OutageWindow::new(Instant::now()),
            stalls,
            key_book: Mutex::new(super::keys::KeyBook::new(max_keys)),
        }
    }

    /// Writes one proxied exchange, forwarded at `forwarded`, under its key and scope.
    pub(crate) fn record_exchange(
        &self,
        key: String,
        scope: String,
        forwarded: Instant,
        exchange: super::keys::Exchange,
    ) {
        lock(&self.key_book).record(key, scope, forwarded, exchange);
    }

    /// What the upstream did with each key, in proxy mode.
    pub(crate) fn keys(&self) -> Vec<super::keys::KeyReport> {
        lock(&self.key_book).reports()
    }

    pub(crate) fn executions(&self) -> u64 {
        self.executions.load(Ordering::Acquire)
    }

    pub(crate) fn executions_for(&self, key: &str) -> u64 {
        lock(&self.store).executions_for(key)
    }

    pub(crate) fn duplicates(&self) -> Vec<String> {
        lock(&self.book).duplicates.keys().cloned().collect()
    }

    pub(crate) fn duplicate_details(&self) -> Vec<super::Duplicate> {
        lock(&self.book).duplicates.values().cloned().collect()
    }

    pub(crate) fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.book).log.entries().cloned().collect()
    }

    /// The logged requests that these routes answered.
    pub(crate) fn requests_to(&self, routes: &[Arc<Compiled>]) -> Vec<ReceivedRequest> {
        lock(&self.book)
            .log
            .entries()
            .filter(|r| {
                r.route()
                    .is_some_and(|name| routes.iter().any(|route| *route.name == *name))
            })
            .cloned()
            .collect()
    }

    /// The routes now, in order.
    pub(crate) fn routes(&self) -> Routes {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds routes after the others; a name already taken refuses them all.
    pub(crate) fn add_routes(&self, added: Vec<Compiled>) -> Result<usize, String> {
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<Arc<Compiled>> = routes.as_ref().clone();
        for route in added {
            if list.iter().any(|r| r.name == route.name) {
                return Err(format!("a route is already named {:?}", route.name));
            }
            list.push(Arc::new(route));
        }
        let count = list.len();
        *routes = Arc::new(list);
        Ok(count)
    }

    /// The routes `selector` names: the one with that name, or every route with that
    /// `METHOD path`.
    pub(crate) fn select(&self, selector: &str) -> Result<Vec<Arc<Compiled>>, MockError> {
        let routes = self.routes();
        let chosen: Vec<Arc<Compiled>> = routes
            .iter()
            .filter(|r| r.answers_to(selector))
            .cloned()
            .collect();
        if chosen.is_empty() {
            return Err(MockError::UnknownRoute {
                route: selector.to_owned(),
                known: routes.iter().map(|r| r.name.to_string()).collect(),
            });
        }
        Ok(chosen)
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            executions: self.executions(),
            requests: self.requests.load(Ordering::Acquire),
            replays: self.replays.load(Ordering::Acquire),
            conflicts: self.conflicts.load(Ordering::Acquire),
            mismatches: self.mismatches.load(Ordering::Acquire),
            stored_keys: lock(&self.store).len(),
            // The global queue and every route's own.
            faults_queued: lock(&self.faults).scripted.len()
                + self
                    .routes()
                    .iter()
                    .map(|r| lock(&r.faults).scripted.len())
                    .sum::<usize>(),
            duplicates: self.duplicates(),
            diverged_keys: lock(&self.key_book).diverged(),
            stalled: self.stalls.stalled(),
            routes: self.routes().iter().map(|r| r.stats()).collect(),
        }
    }

    pub(crate) fn replays(&self) -> u64 {
        self.replays.load(Ordering::Acquire)
    }

    pub(crate) fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Acquire)
    }

    pub(crate) fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Acquire)
    }

    /// Forgets stored keys, counts, the log and queued faults. The random plan, if
    /// any, goes on from where it was.
    pub(crate) fn reset(&self) {
        lock(&self.store).clear();
        for route in self.routes().iter() {
            route.reset();
        }
        lock(&self.faults).scripted.clear();
        self.outage
            .begin(super::outage::Outage::Drop, Duration::ZERO);
        self.stalls.reset_count();
        {
            let mut book = lock(&self.book);
            book.log.clear();
            book.duplicates.clear();
        }
        *lock(&self.resources) = Resources::default();
        lock(&self.key_book).clear();
        for counter in [
            &self.executions,
            &self.requests,
            &self.replays,
            &self.conflicts,
            &self.mismatches,
        ] {
            counter.store(0, Ordering::Release);
        }
    }

    /// Counts a request and logs it (unless the log is off: then nothing is copied).
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        self.requests.fetch_add(1, Ordering::AcqRel);
        let at = Instant::now();
        let mut book = lock(&self.book);
        book.log.push(entry, at);
    }

    /// Whether requests are logged at all, so that a request need not decode its key
    /// for a log that keeps nothing.
    pub(crate) fn logging(&self) -> bool {
        self.config.max_log > 0 && self.config.max_log_bytes > 0
    }

    /// The fault for the next request to `route` (`None`: a request no route answers,
    /// or a server without routes): the route's queued faults, then the server's; then
    /// the route's random plan if it has one, else the server's.
    pub(crate) fn next_fault(&self, route: Option<&Compiled>) -> Option<Fault> {
        if let Some(fault) = route.and_then(|r| lock(&r.faults).scripted.pop_front()) {
            return Some(fault);
        }
        let mut faults = lock(&self.faults);
        if let Some(fault) = faults.scripted.pop_front() {
            return Some(fault);
        }
        // The route's own plan, if it has one, replaces the server's.
        if let Some(drawn) =
            route.and_then(|r| lock(&r.faults).random.as_mut().map(RandomFaults::draw))
        {
            return drawn;
        }
        faults.next()
    }

    /// Decides, atomically for the key, what a request with this fingerprint gets.
    pub(crate) fn begin(&self, key: ScopedKey, fingerprint: u64) -> Begin {
        let begin = lock(&self.store).begin(key, fingerprint, Instant::now());
        let counter = match &begin {
            Begin::Replay(_) => &self.replays,
            Begin::InFlight => &self.conflicts,
            Begin::Mismatch => &self.mismatches,
            Begin::Execute(_) | Begin::Full => return begin,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        begin
    }

    /// The operation itself: assigns the resource's id, makes its answer with `answer`,
    /// counts the execution and stores the answer under the key that
    /// [`begin`](Self::begin) let through. An `Err` from `answer` (a closure handler
    /// that failed) is no execution: it is not stored and the key is let go.
    pub(crate) fn perform(
        &self,
        key: Option<&ScopedKey>,
        at: &Resource,
        answer: impl FnOnce(u64) -> Performed,
    ) -> Result<Arc<Stored>, Stored> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let (stored, created) = match answer(id) {
            Ok(done) => done,
            Err(failed) => {
                if let Some(key) = key {
                    self.abandon(key);
                }
                return Err(failed);
            }
        };
        let stored = Arc::new(stored);
        self.executions.fetch_add(1, Ordering::AcqRel);
        if let Some(created) = created {
            self.remember(at, created, &stored);
        }
        if let Some(key) = key {
            let (executions, across) = {
                let mut store = lock(&self.store);
                let executions = store.complete(key, stored.clone());
                (executions, store.across_scopes(key))
            };
            let scopes = across.unwrap_or_else(|| vec![(key.scope.clone(), executions)]);
            let total: u64 = scopes.iter().map(|(_, n)| n).sum();
            if total > 1 {
                let mut book = lock(&self.book);
                if book.duplicates.len() < MAX_DUPLICATES || book.duplicates.contains_key(&*key.key)
                {
                    let duplicate = super::Duplicate {
                        key: key.key.to_string(),
                        executions: total,
                        scopes: scopes
                            .iter()
                            .map(|(s, _)| scope_label(s.as_ref()))
                            .collect(),
                    };
                    book.duplicates.insert(key.key.to_string(), duplicate);
                }
            }
        }
        Ok(stored)
    }

    /// Keeps a created resource for read-back at `{path}/{id}`, within its caller's
    /// scope; the oldest goes first past `max_keys`.
    fn remember(&self, at: &Resource, id: CreatedId, stored: &Arc<Stored>) {
        let path = format!("{}/{id}", at.path.trim_end_matches('/'));
        let key = Arc::new((at.scope.clone(), path));
        let mut resources = lock(&self.resources);
        if resources.order.len() >= self.config.max_keys.max(1) {
            if let Some(oldest) = resources.order.pop_front() {
                resources.map.remove(&oldest);
            }
        }
        resources.order.push_back(key.clone());
        resources.map.insert(key, stored.clone());
    }

    /// A created resource at `path`, for a caller with this scope.
    pub(crate) fn resource(&self, scope: Option<Bytes>, path: &str) -> Option<Arc<Stored>> {
        let key = (scope, path.to_owned());
        lock(&self.resources).map.get(&key).cloned()
    }

    /// Lets go of a key [`begin`](Self::begin) let through that will not execute.
    pub(crate) fn abandon(&self, key: &ScopedKey) {
        lock(&self.store).abandon(key);
    }

    /// Queues `fault` for the next `times` requests; returns how many are queued now.
    pub(crate) fn inject(&self, fault: Fault, times: usize) -> usize {
        let mut faults = lock(&self.faults);
        faults.inject(fault, times);
        faults.scripted.len()
    }
}
