//! The accept loop: one hyper HTTP/1 connection task per client, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

use super::handler;
use super::shared::Shared;
use super::socket::{Sabotage, Socket};

/// Accepts connections until `stopped` fires.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    header_read_timeout: Duration,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that never finishes its headers is cut off instead of holding a task.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .auto_date_header(false);
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let sabotage = Arc::new(Sabotage::default());
            let socket = Socket::new(stream, sabotage.clone());
            let service = hyper::service::service_fn(move |request| {
                handler::handle(shared.clone(), sabotage.clone(), request)
            });
            // Errors here are closed connections, deliberate (faults) or the client's.
            let _ = http.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}
