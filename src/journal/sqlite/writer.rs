//! The writer thread: every write of every caller goes through it, grouped, so that
//! concurrent writes share one synced commit and each caller is answered only once its
//! group is durable.

use std::sync::mpsc;

use rusqlite::{Connection, TransactionBehavior};

use crate::journal::{JournalError, JournalFuture};

/// The way to the writer thread, shared by a journal's clones.
#[derive(Clone, Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `connection`.
    pub(super) fn start(connection: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("idempotent-retry-journal".into())
            .spawn(move || writer(connection, &queue))?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the writer thread, inside the next group of writes, and answers
    /// once that group is committed (synced).
    pub(super) fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> JournalFuture<'static, T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection: Result<&Connection, &str>| {
            let result = match connection {
                Ok(connection) => work(connection),
                Err(reason) => Err(JournalError::Storage {
                    reason: reason.to_owned(),
                    source: None,
                }),
            };
            let reply: Reply = Box::new(move |failed_commit: Option<&str>| {
                let result = match (result, failed_commit) {
                    (Ok(_), Some(reason)) => Err(JournalError::Storage {
                        reason: reason.to_owned(),
                        source: None,
                    }),
                    (result, _) => result,
                };
                let _ = answer.send(result);
            });
            reply
        });
        let queued = self.jobs.send(job);
        Box::pin(async move {
            let stopped = || JournalError::Storage {
                reason: "the journal's writer thread stopped".into(),
                source: None,
            };
            queued.map_err(|_| stopped())?;
            answered.await.map_err(|_| stopped())?
        })
    }
}

/// One piece of work for the writer: run on the connection (or told why it cannot be),
/// it returns how to answer once its group is committed.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Reply + Send>;

/// Answers a job's caller: `None` once its group is committed, else why the commit
/// failed.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// Most jobs committed in one group.
const MAX_GROUP: usize = 512;

/// The writer thread: takes whatever jobs are waiting (at least one), runs them in one
/// `BEGIN IMMEDIATE` transaction, commits once, then answers each. Ends when every
/// journal handle is gone.
fn writer(mut connection: Connection, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&mut connection, group);
    }
}

fn commit_group(connection: &mut Connection, group: Vec<Job>) {
    let transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(e) => {
            let reason = format!("could not begin a write: {e}");
            for job in group {
                job(Err(&reason))(Some(&reason));
            }
            return;
        }
    };
    // No savepoint per job: each job's writes are single statements, and SQLite undoes
    // a failed statement by itself, so one job's failure leaves the others' writes whole.
    let replies: Vec<Reply> = group.into_iter().map(|job| job(Ok(&transaction))).collect();
    let failed = transaction
        .commit()
        .err()
        .map(|e| format!("could not commit to the journal: {e}"));
    for reply in replies {
        reply(failed.as_deref());
    }
}
