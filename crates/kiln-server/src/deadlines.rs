//! Time limits on what a client sends after its headers, so that no client can hold a
//! connection (and its slot under `--max-connections`) by sending nothing:
//!
//! - [`TimedBody`]: a request body that fails once its deadline passes before it ends — the
//!   whole body within `--body-timeout-secs` of the request's start, or, on a long-lived gRPC
//!   stream, each next message within the idle timeout.
//! - [`Activity`]: a connection with no request in progress for `--idle-timeout-secs` is asked
//!   to close gracefully (HTTP/2 GOAWAY, HTTP/1 close). A request counts as in progress until
//!   its response body is dropped (sent or cut), so a long SSE stream is busy, not idle.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// Why a body read ended early: its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyTimeout(pub String);

/// How a [`TimedBody`] times its reads.
#[derive(Debug, Clone, Copy)]
pub enum BodyDeadline {
    /// The whole body by then.
    Total(Duration),
    /// At most this long between two frames (streams whose messages come when they come).
    BetweenFrames(Duration),
}

pin_project_lite::pin_project! {
    /// A request body with a deadline (see [`BodyDeadline`]).
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        deadline: BodyDeadline,
        timed_out: bool,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, deadline: BodyDeadline) -> Self {
        let first = match deadline {
            BodyDeadline::Total(d) | BodyDeadline::BetweenFrames(d) => d,
        };
        TimedBody { inner, timer: tokio::time::sleep(first), deadline, timed_out: false }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if *this.timed_out {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let BodyDeadline::BetweenFrames(gap) = this.deadline {
                    this.timer.as_mut().reset(Instant::now() + *gap);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    *this.timed_out = true;
                    let message = match this.deadline {
                        BodyDeadline::Total(d) => {
                            format!(
                                "the request body did not arrive within {} s (--body-timeout-secs)",
                                d.as_secs_f64()
                            )
                        }
                        BodyDeadline::BetweenFrames(d) => {
                            format!("the stream sent nothing for {} s (--idle-timeout-secs)", d.as_secs_f64())
                        }
                    };
                    Poll::Ready(Some(Err(Box::new(BodyTimeout(message)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One connection's requests in progress and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    busy: AtomicUsize,
    /// Milliseconds after `opened` when the connection last went idle.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { opened: Instant::now(), busy: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) })
    }

    /// Marks a request in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long the connection has had no request in progress (`None`: one is).
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
    }
}

/// A request in progress on its connection (RAII: dropping it, however the request ended,
/// marks the end).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request's [`Busy`] mark until it is dropped.
    pub struct BusyBody<B> {
        #[pin]
        inner: B,
        busy: Busy,
    }
}

impl<B> BusyBody<B> {
    pub fn new(inner: B, busy: Busy) -> Self {
        BusyBody { inner, busy }
    }
}

impl<B: Body> Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Activity {
    /// Resolves once the connection has had no request in progress for `idle`.
    pub async fn idle_for_at_least(&self, idle: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(so_far) if so_far >= idle => return,
                Some(so_far) => idle - so_far,
                None => idle,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that sends one frame and then nothing, ever (a stalled client).
    struct Stalled(bool);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"12345")))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_at_its_deadline() {
        let body = Box::pin(TimedBody::new(Stalled(false), BodyDeadline::Total(Duration::from_secs(30))));
        let e = body.collect().await.expect_err("times out");
        assert!(e.to_string().contains("within 30 s (--body-timeout-secs)"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_may_pause_but_not_past_the_gap() {
        let mut body =
            std::pin::pin!(TimedBody::new(Stalled(false), BodyDeadline::BetweenFrames(Duration::from_secs(5))));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let first = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"12345")));
        let started = Instant::now();
        let e = body.frame().await.expect("an error").expect_err("times out");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(e.to_string().contains("sent nothing for 5 s"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new();
        let busy = activity.begin();
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(busy);
        let started = Instant::now();
        activity.idle_for_at_least(Duration::from_secs(5)).await;
        assert!(started.elapsed() >= Duration::from_secs(4), "{:?}", started.elapsed());
    }

    #[test]
    fn a_connection_is_busy_until_every_request_ends() {
        let activity = Activity::new();
        let one = activity.begin();
        let two = activity.begin();
        assert_eq!(activity.idle_for(), None);
        drop(one);
        assert_eq!(activity.idle_for(), None);
        drop(two);
        assert!(activity.idle_for().is_some_and(|d| d < Duration::from_secs(1)));
    }
}
