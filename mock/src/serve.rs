//! The accept loop: one hyper HTTP/1 connection task per client, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

use http::{HeaderName, Request};

use super::handler;
use super::response::{Body, Dropped};
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
                // Only a logged request keeps a handle on the connection's sabotage, to
                // read the fault it drew.
                let line = shared.config.log_requests.then(|| {
                    let line = RequestLine::of(&request, &shared.config.key_header);
                    (line, sabotage.clone())
                });
                let (shared, sabotage) = (shared.clone(), sabotage.clone());
                async move {
                    let answer = handler::handle(shared, sabotage, request).await;
                    if let Some((line, sabotage)) = line {
                        line.print(&answer, sabotage.take_fault());
                    }
                    answer
                }
            });
            // Errors here are closed connections, deliberate (faults) or the client's.
            let _ = http.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

/// One request as its log line names it (`log_requests`): taken before the request is
/// handled, printed once it is answered.
struct RequestLine {
    method: http::Method,
    path: String,
    key: String,
}

impl RequestLine {
    fn of<B>(request: &Request<B>, key_header: &HeaderName) -> Self {
        let key = request.headers().get(key_header).map_or_else(
            || "-".to_owned(),
            |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
        Self {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            key,
        }
    }

    /// `POST /orders key=k1 -> 201 replayed`, `... -> dropped fault=drop_after_processing`,
    /// on standard error.
    fn print(self, answer: &Result<http::Response<Body>, Dropped>, fault: Option<&str>) {
        let outcome = match answer {
            Ok(response) => {
                let replayed = response
                    .headers()
                    .get(super::response::REPLAYED)
                    .is_some_and(|v| v == "true");
                let status = response.status().as_u16();
                if replayed {
                    format!("{status} replayed")
                } else {
                    status.to_string()
                }
            }
            Err(Dropped) => "dropped".to_owned(),
        };
        let fault = fault.map(|f| format!(" fault={f}")).unwrap_or_default();
        eprintln!(
            "{} {} key={} -> {outcome}{fault}",
            self.method, self.path, self.key
        );
    }
}
