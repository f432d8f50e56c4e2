//! The connection below HTTP, for the faults that hyper cannot express: a reset (RST)
//! instead of a clean close, and bytes that are not HTTP instead of the answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a fault asks of one connection (0: nothing); set by the handler, read by
/// [`Socket`].
#[derive(Debug, Default)]
pub(crate) struct Sabotage {
    wire: AtomicU8,
    /// The fault drawn for the request in flight (HTTP/1: one at a time), for the
    /// request log line.
    fault: std::sync::Mutex<Option<&'static str>>,
}

const RESET: u8 = 1;
const GARBAGE: u8 = 2;

impl Sabotage {
    /// Close the connection with a reset (RST) instead of a clean close (FIN).
    pub(crate) fn reset(&self) {
        self.wire.store(RESET, Ordering::Release);
    }

    /// Replace everything written from now on with bytes that are not HTTP.
    pub(crate) fn garbage(&self) {
        self.wire.store(GARBAGE, Ordering::Release);
    }

    /// Notes the fault drawn for the request in flight.
    pub(crate) fn note_fault(&self, name: &'static str) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(name);
    }

    /// The fault drawn for the request that just ended, if any, forgotten.
    pub(crate) fn take_fault(&self) -> Option<&'static str> {
        self.fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn is(&self, what: u8) -> bool {
        self.wire.load(Ordering::Acquire) == what
    }
}

/// What a garbled answer is made of: the start of a TLS alert, then bytes no HTTP
/// parser accepts (a server that speaks something else, or memory gone wrong).
const JUNK: &[u8; 32] = b"\x15\x03\x03\x00\x02\x02\x28\xff\x00\xfe\x01\xfd\x02\xfc\x03\xfb\
\x04\xfa\x05\xf9\x06\xf8\x07\xf7\x08\xf6\x09\xf5\x0a\xf4\x0b\xf3";

/// A client's TCP stream, as hyper sees it, with the sabotage its faults ask for.
#[derive(Debug)]
pub(crate) struct Socket {
    stream: TcpStream,
    sabotage: Arc<Sabotage>,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream, sabotage: Arc<Sabotage>) -> Self {
        Self { stream, sabotage }
    }

    /// Makes the coming close abortive: the kernel sends RST and drops unsent data.
    /// A zero linger never blocks the thread (only a non-zero one would).
    fn arm_reset(&self) {
        let _ = self.stream.set_zero_linger();
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.sabotage.is(RESET) {
            self.arm_reset();
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sabotage.is(GARBAGE) {
            // The same bytes for the same length, so a write retried after `Pending`
            // sends what it was asked to.
            let junk = &JUNK[..buf.len().min(JUNK.len())];
            return Pin::new(&mut this.stream).poll_write(cx, junk);
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sabotage.is(GARBAGE) {
            let len = bufs
                .iter()
                .map(|b| b.len())
                .find(|&len| len > 0)
                .unwrap_or(0);
            let junk = &JUNK[..len.min(JUNK.len())];
            return Pin::new(&mut this.stream).poll_write(cx, junk);
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sabotage.is(RESET) {
            // No FIN first: the close in `drop` is the reset.
            this.arm_reset();
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
