//! The group writer: every record, attempt (with its lease renewal) and completion of a
//! process goes through it. It takes all the writes waiting at that moment and commits
//! them in one transaction (their statements pipelined on its own connection), so
//! concurrent operations share one synced commit. Each caller is answered only once its
//! group is durable. Each write stays fenced on its own: one whose lease was lost is
//! refused for its operation alone, and the rest of the group commits. A group that
//! fails (connection lost, a statement refused) fails each of its callers, and the next
//! group connects again.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::connection::Target;
use crate::journal::JournalError;

/// One write waiting for the next group.
#[derive(Debug)]
pub(super) enum Write {
    /// A new operation's record, with its lease (ignored if the id is taken).
    Record(Record),
    /// One more attempt counted, the lease renewed for `lease_ms`.
    Attempt {
        id: String,
        token: i64,
        lease_ms: f64,
    },
    /// The final answer recorded, the lease let go.
    Complete {
        id: String,
        token: i64,
        status: i32,
        headers: Vec<u8>,
        body: Vec<u8>,
    },
}

/// A new operation's row.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) method: String,
    pub(super) url: String,
    pub(super) key_header: String,
    pub(super) key_value: Vec<u8>,
    pub(super) headers: Vec<u8>,
    pub(super) body: Vec<u8>,
    pub(super) holder: String,
    pub(super) lease_ms: f64,
    pub(super) secret_headers: String,
    pub(super) fingerprint: Option<Vec<u8>>,
}

impl Write {
    fn id(&self) -> &str {
        match self {
            Write::Record(record) => &record.id,
            Write::Attempt { id, .. } | Write::Complete { id, .. } => id,
        }
    }
}

/// A write and the caller waiting for it: `true` once it applied and committed, `false`
/// when it did not apply (the id was taken, or the lease was lost).
type Job = (Write, oneshot::Sender<Result<bool, JournalError>>);

/// Most writes committed in one group.
const MAX_GROUP: usize = 256;

/// The way to the writer, shared by a journal's clones. The writer runs on a thread of
/// its own (with its own small runtime), so that the application's tasks never stand
/// between a group's statements and their answers; it ends when every clone is gone.
#[derive(Debug)]
pub(super) struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer's thread.
    pub(super) fn start(target: Target, namespace: String) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("idempotent-retry-journal".into())
            .spawn(move || runtime.block_on(run(target, namespace, queue)))?;
        Ok(Self { jobs })
    }

    /// Queues `write` for the next group and answers once that group is committed.
    pub(super) async fn write(&self, write: Write) -> Result<bool, JournalError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || JournalError::Storage {
            reason: "the journal's writer thread stopped".into(),
            source: None,
        };
        self.jobs.send((write, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer task: takes the writes waiting (at least one; an operation at most once
/// a group, a second write of it waits for the next), commits them, answers each.
async fn run(target: Target, namespace: String, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut connection = None;
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut ids: HashSet<String> = HashSet::from([first.0.id().to_owned()]);
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(job) = queue.try_recv() else { break };
            if ids.insert(job.0.id().to_owned()) {
                group.push(job);
            } else {
                carried = Some(job);
                break;
            }
        }
        // One order for every process's groups: two of them locking the same rows
        // lock them in the same order.
        group.sort_by(|a, b| a.0.id().cmp(b.0.id()));
        match commit(&mut connection, &target, &namespace, &group).await {
            Ok(applied) => {
                for ((_, answer), applied) in group.into_iter().zip(applied) {
                    let _ = answer.send(Ok(applied));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, answer) in group {
                    let _ = answer.send(Err(JournalError::storage(
                        "could not commit a group of journal writes",
                        Arc::clone(&e),
                    )));
                }
            }
        }
    }
}

/// The writer's own connection and its statements, prepared once.
struct Prepared {
    client: Client,
    record: Statement,
    attempt: Statement,
    complete: Statement,
}

/// Commits one group in one transaction: for each write, whether it applied. On an
/// error nothing of the group is committed (unless the connection broke while the
/// commit was under way: then the database decided, as for any single write), and
/// the next group connects again if the connection is gone.
async fn commit(
    connection: &mut Option<Prepared>,
    target: &Target,
    namespace: &str,
    group: &[Job],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let prepared = match connection.take().filter(|c| !c.client.is_closed()) {
        Some(prepared) => prepared,
        None => {
            let client = target.connect().await?;
            Prepared {
                record: client.prepare(RECORD).await?,
                attempt: client.prepare(ATTEMPT).await?,
                complete: client.prepare(COMPLETE).await?,
                client,
            }
        }
    };
    let result = prepared.group(namespace, group).await;
    if !prepared.client.is_closed() {
        *connection = Some(prepared);
    }
    result
}

/// One statement on its way.
type Sql<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

impl Prepared {
    /// `BEGIN`, each write's statement, `COMMIT`, all sent at once (pipelined on the one
    /// connection, in this order) and answered in order. The group committed only if
    /// every statement succeeded: after a failed one, PostgreSQL refuses the rest and
    /// turns the `COMMIT` into a rollback.
    async fn group(
        &self,
        namespace: &str,
        group: &[Job],
    ) -> Result<Vec<bool>, tokio_postgres::Error> {
        let client = &self.client;
        let mut statements: Vec<Sql<'_>> = Vec::with_capacity(group.len() + 2);
        statements.push(Box::pin(async move {
            client.batch_execute("BEGIN").await.map(|()| 0)
        }));
        for (write, _) in group {
            statements.push(self.statement(&namespace, write));
        }
        statements.push(Box::pin(async move {
            client.batch_execute("COMMIT").await.map(|()| 0)
        }));
        let mut changed = Vec::with_capacity(statements.len());
        for outcome in in_order(statements).await {
            changed.push(outcome?);
        }
        // Without BEGIN's and COMMIT's.
        Ok(changed[1..changed.len() - 1]
            .iter()
            .map(|rows| *rows == 1)
            .collect())
    }

    /// The statement of one write, fenced on its own: an update applies only where the
    /// operation is still pending under the caller's token.
    fn statement<'a>(&'a self, namespace: &'a &'a str, write: &'a Write) -> Sql<'a> {
        let client = &self.client;
        match write {
            Write::Record(r) => {
                let params: [&(dyn ToSql + Sync); 13] = [
                    namespace,
                    &r.id,
                    &r.key,
                    &r.method,
                    &r.url,
                    &r.key_header,
                    &r.key_value,
                    &r.headers,
                    &r.body,
                    &r.holder,
                    &r.lease_ms,
                    &r.secret_headers,
                    &r.fingerprint,
                ];
                Box::pin(client.execute_raw(&self.record, params))
            }
            Write::Attempt {
                id,
                token,
                lease_ms,
            } => {
                let params: [&(dyn ToSql + Sync); 4] = [namespace, id, token, lease_ms];
                Box::pin(client.execute_raw(&self.attempt, params))
            }
            Write::Complete {
                id,
                token,
                status,
                headers,
                body,
            } => {
                let params: [&(dyn ToSql + Sync); 6] =
                    [namespace, id, token, status, headers, body];
                Box::pin(client.execute_raw(&self.complete, params))
            }
        }
    }
}

/// Runs every future to its end on this task, first polling each in the order given:
/// tokio-postgres sends a statement when its future is first polled, so the statements
/// leave in this order (pipelined), and their answers come back in it.
async fn in_order(mut futures: Vec<Sql<'_>>) -> Vec<Result<u64, tokio_postgres::Error>> {
    let mut outputs: Vec<Option<Result<u64, tokio_postgres::Error>>> =
        futures.iter().map(|_| None).collect();
    // The oldest future not yet answered, and how many have been polled (sent).
    let (mut next, mut sent) = (0, 0);
    std::future::poll_fn(|cx| {
        while next < futures.len() {
            if outputs[next].is_none() {
                match futures[next].as_mut().poll(cx) {
                    Poll::Ready(output) => outputs[next] = Some(output),
                    Poll::Pending => break,
                }
            }
            next += 1;
        }
        sent = sent.max(next + 1);
        while sent < futures.len() {
            if let Poll::Ready(output) = futures[sent].as_mut().poll(cx) {
                outputs[sent] = Some(output);
            }
            sent += 1;
        }
        if next == futures.len() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

// Each statement finds its row by the primary key alone: the state is tested as
// `state + 0`, which no index serves, so that the planner never walks the index of open
// operations (every pending row of the namespace) to find one of them. Without it, on a
// table whose statistics are not yet gathered, a claim among 10,000 pending operations
// scanned them all.

/// A new operation's record, with the caller's lease; nothing if the id is taken.
const RECORD: &str = "INSERT INTO idempotent_retry_operations (namespace, id, key, method, url, \
    key_header, key_value, headers, body, holder, expires_at, secret_headers, fingerprint) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
    now() + $11::float8 * interval '1 millisecond', $12, $13) \
    ON CONFLICT (namespace, id) DO NOTHING";

/// One more attempt counted, the lease renewed.
const ATTEMPT: &str = "UPDATE idempotent_retry_operations SET attempts = attempts + 1, \
    expires_at = now() + $4::float8 * interval '1 millisecond' \
    WHERE namespace = $1 AND id = $2 AND token = $3 AND state + 0 = 0";

/// The final answer recorded, the lease let go; after a 2xx answer, the request's body
/// dropped when its fingerprint stands for it (nothing sends it again).
const COMPLETE: &str = "UPDATE idempotent_retry_operations SET state = 1, answer_status = $4, \
    answer_headers = $5, answer_body = $6, holder = NULL, closed_at = now(), \
    body = CASE WHEN $4 BETWEEN 200 AND 299 AND fingerprint IS NOT NULL THEN ''::bytea \
    ELSE body END \
    WHERE namespace = $1 AND id = $2 AND token = $3 AND state + 0 = 0";
