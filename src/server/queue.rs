//! The ordered reply queue between a client's session and its writer, and [`Together`], the
//! one future that runs both in the client's task.
//!
//! Both ends live in one task and are always polled session first, then writer, so neither
//! needs to wake the other: what the session queues is seen by the writer in the same poll, and
//! a session waiting for room is polled again at once when the writer has made some. A tokio
//! channel here woke the task on every reply it carried, which polled the whole client (its
//! read, kill and drain waits included) a second time for nothing once per request at pipeline
//! depth 1. The queue is bounded by replies (`server.max_pending_replies`): an item weighs
//! the replies it carries (a run of requests sent upstream, gathered replies of the proxy's
//! own), at least one.
//!
//! Because they register no waker, [`Room::send`] and [`Rx::recv`] must only be awaited inside
//! the [`Together`] that owns the pair.

use super::writer::Out;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

struct State {
    /// Items with their weights.
    items: VecDeque<(Out, usize)>,
    /// The weights of `items`, summed.
    weight: usize,
    sender: bool,
    receiver: bool,
    /// The session found no room for an item of this weight and waits.
    blocked: Option<usize>,
}

impl State {
    /// Whether an item of weight `w` fits: the queue holds at most `cap`, but an item is
    /// taken whole into an empty queue.
    fn fits(&self, w: usize, cap: usize) -> bool {
        self.weight == 0 || self.weight + w <= cap
    }

    fn push(&mut self, item: Out, w: usize) {
        self.items.push_back((item, w));
        self.weight += w;
    }

    fn pop(&mut self) -> Option<Out> {
        let (item, w) = self.items.pop_front()?;
        self.weight -= w;
        Some(item)
    }
}

struct Shared {
    state: Mutex<State>,
    cap: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A queue of at most `cap` replies' worth of items (at least one).
pub(crate) fn pair(cap: usize) -> (Tx, Rx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            weight: 0,
            sender: true,
            receiver: true,
            blocked: None,
        }),
        cap: cap.max(1),
    });
    (Tx(shared.clone()), Rx(shared))
}

/// The session's end.
pub struct Tx(Arc<Shared>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("queue::Tx")
    }
}

/// The writer is gone (the client stopped reading): the item was not queued.
#[derive(Debug)]
pub struct Closed;

/// What [`Together`] keeps of a queue: whether its session waits for room.
pub(crate) struct Link(Arc<Shared>);

impl Tx {
    /// The link [`Together::new`] takes, from the end the session will send on.
    pub(crate) fn link(&self) -> Link {
        Link(self.0.clone())
    }

    /// Queues `item`, which carries `replies` replies, if it fits now; gives it back if the
    /// queue is full.
    pub fn try_send(&self, item: Out, replies: usize) -> Result<(), TrySend> {
        let mut s = self.0.lock();
        if !s.receiver {
            return Err(TrySend::Closed);
        }
        let w = replies.max(1);
        if !s.fits(w, self.0.cap) {
            return Err(TrySend::Full(item));
        }
        s.push(item, w);
        Ok(())
    }

    /// A handle that waits for room (see [`Room::send`]) without borrowing this end, so the
    /// session can watch its client while it waits.
    pub fn room(&self) -> Room {
        Room(self.0.clone())
    }
}

/// Why [`Tx::try_send`] did not queue its item.
pub enum TrySend {
    Full(Out),
    Closed,
}

/// Waits for room in a queue; dropping it closes nothing.
pub struct Room(Arc<Shared>);

impl Room {
    /// Queues `item`, which carries `replies` replies, waiting for room while the queue is
    /// full.
    pub async fn send(&self, item: Out, replies: usize) -> Result<(), Closed> {
        let w = replies.max(1);
        let mut item = Some(item);
        poll_fn(|_| {
            let mut s = self.0.lock();
            if !s.receiver {
                return Poll::Ready(Err(Closed));
            }
            if s.fits(w, self.0.cap) {
                if let Some(it) = item.take() {
                    s.push(it, w);
                }
                return Poll::Ready(Ok(()));
            }
            s.blocked = Some(w);
            Poll::Pending
        })
        .await
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.0.lock().sender = false;
    }
}

/// The writer's end.
pub struct Rx(Arc<Shared>);

impl Rx {
    /// The next item; `None` once the session is gone and everything it queued was taken.
    pub async fn recv(&mut self) -> Option<Out> {
        poll_fn(|_| {
            let mut s = self.0.lock();
            match s.pop() {
                Some(it) => Poll::Ready(Some(it)),
                None if !s.sender => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Out> {
        self.0.lock().pop()
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        self.0.lock().receiver = false;
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A session and its writer, polled in that order until both are done; resolves to the
/// session's output.
pub(crate) struct Together<T> {
    session: Option<Boxed<T>>,
    out: Option<T>,
    writer: Option<Boxed<()>>,
    shared: Arc<Shared>,
}

impl<T> Together<T> {
    /// `link` is from the queue `session` sends on and `writer` takes from.
    pub(crate) fn new(
        link: Link,
        session: impl Future<Output = T> + Send + 'static,
        writer: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            session: Some(Box::pin(session)),
            out: None,
            writer: Some(Box::pin(writer)),
            shared: link.0,
        }
    }
}

impl<T: Unpin> Future for Together<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let me = &mut *self;
        loop {
            if let Some(s) = me.session.as_mut() {
                if let Poll::Ready(out) = s.as_mut().poll(cx) {
                    me.out = Some(out);
                    me.session = None;
                }
            }
            if let Some(w) = me.writer.as_mut() {
                if w.as_mut().poll(cx).is_ready() {
                    me.writer = None;
                }
            }
            if me.session.is_none() && me.writer.is_none() {
                return Poll::Ready(me.out.take());
            }
            // A session waiting for room runs again as soon as there is some (or the writer
            // is gone, which it must learn of).
            let again = {
                let mut s = me.shared.lock();
                let again = s
                    .blocked
                    .is_some_and(|w| s.fits(w, me.shared.cap) || !s.receiver);
                if again {
                    s.blocked = None;
                }
                again
            };
            if !again || me.session.is_none() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pair, Together};
    use crate::server::writer::Out;
    use bytes::Bytes;

    fn item(i: usize) -> Out {
        Out::Ready(Bytes::from(i.to_string()))
    }

    fn value(o: Out) -> usize {
        match o {
            Out::Ready(b) => std::str::from_utf8(&b).unwrap().parse().unwrap(),
            _ => usize::MAX,
        }
    }

    #[tokio::test]
    async fn a_session_that_outruns_its_writer_waits_for_room_and_nothing_is_lost() {
        let (tx, mut rx) = pair(2);
        let link = tx.link();
        let session = async move {
            for i in 0..1000 {
                tx.room().send(item(i), 1).await.unwrap();
            }
            "session done"
        };
        let (got_tx, got_rx) = tokio::sync::oneshot::channel();
        let writer = async move {
            let mut got = Vec::new();
            while let Some(o) = rx.recv().await {
                got.push(value(o));
                if got.len() % 7 == 0 {
                    // The writer waits on something else (a socket, an upstream reply).
                    tokio::task::yield_now().await;
                }
            }
            let _ = got_tx.send(got);
        };
        let out = Together::new(link, session, writer).await;
        assert_eq!(out, Some("session done"));
        assert_eq!(got_rx.await.unwrap(), (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn the_bound_counts_replies_and_an_item_larger_than_it_enters_an_empty_queue() {
        let (tx, mut rx) = pair(10);
        let link = tx.link();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let session = async move {
            for i in 0..3 {
                tx.room().send(item(i), 4).await.unwrap();
            }
            tx.room().send(item(3), 25).await.unwrap();
            tx.room().send(item(4), 1).await.unwrap();
        };
        let writer = async move {
            let (mut got, mut queued) = (Vec::new(), Vec::new());
            loop {
                // The session queues what fits meanwhile.
                tokio::task::yield_now().await;
                queued.push(rx.0.lock().weight);
                match rx.recv().await {
                    Some(o) => got.push(value(o)),
                    None => break,
                }
            }
            let _ = seen_tx.send((got, queued));
        };
        Together::new(link, session, writer).await;
        let (got, queued) = seen_rx.await.unwrap();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(queued[0], 8, "the third item of 4 waits: 12 > 10");
        assert!(queued.iter().all(|&w| w <= 25), "{queued:?}");
        assert!(
            queued.contains(&25),
            "the item of 25 entered once the queue was empty: {queued:?}"
        );
    }

    #[tokio::test]
    async fn a_writer_that_is_gone_fails_the_sessions_next_send() {
        let (tx, mut rx) = pair(1);
        let link = tx.link();
        let session = async move {
            let mut sent = 0;
            while tx.room().send(item(sent), 1).await.is_ok() {
                sent += 1;
            }
            sent
        };
        let writer = async move {
            // The client stopped reading after two replies.
            rx.recv().await;
            rx.recv().await;
        };
        let sent = Together::new(link, session, writer).await.unwrap();
        assert!((2..=3).contains(&sent), "sent {sent}");
    }
}
