//! One live shared connection's two loops: the writer (queued batches into one write) and the
//! reader (frames replies and completes waiters in order, the exact bytes of their replies).

use super::{Job, Pending, WRITE_BATCH};
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::reply::{self, Proto, ReplyKind};
use crate::transport::{ReadHalf, WriteHalf};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

pub(super) async fn write_loop(
    mut wr: WriteHalf,
    rx: &mut mpsc::Receiver<Job>,
    first: Vec<Job>,
    pending: &Mutex<VecDeque<Pending>>,
    wake: &Notify,
    timeout: Duration,
    addr: &Arc<str>,
) -> Option<UpstreamError> {
    let mut jobs = first;
    jobs.reserve(WRITE_BATCH);
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if jobs.is_empty() && rx.recv_many(&mut jobs, WRITE_BATCH).await == 0 {
            return None;
        }
        let deadline = Instant::now() + timeout;
        // Taken jobs go to `pending` at once, before any await: if the connection ends while
        // this loop waits, they fail with its error like every other pending job.
        stage(&mut jobs, &mut batch, pending, wake, deadline);
        if batch.len() < WRITE_BATCH {
            // Sessions that are ready to run send their requests first, so many clients'
            // requests share one write: the runtime runs a task woken by a send right after the
            // sender, which would otherwise make every request its own write syscall.
            tokio::task::yield_now().await;
            while batch.len() + jobs.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            stage(&mut jobs, &mut batch, pending, wake, deadline);
        }
        let res = match batch.as_slice() {
            // One batch: write its bytes as they are, without copying them.
            [one] => wr.write_all(one).await,
            all => {
                for b in all {
                    buf.extend_from_slice(b);
                }
                wr.write_all(&buf).await
            }
        };
        // TLS may hold back what the socket did not take; plain TCP flushes nothing.
        let res = match res {
            Ok(()) => wr.flush().await,
            e => e,
        };
        buf.clear();
        batch.clear();
        if let Err(e) = res {
            return Some(UpstreamError::Unavailable {
                addr: addr.clone(),
                detail: e.to_string().into(),
            });
        }
    }
}

/// Moves taken jobs into `pending` (their replies' waiters, in order) and their bytes into
/// `batch`; wakes the reader if it had nothing to wait for.
fn stage(
    jobs: &mut Vec<Job>,
    batch: &mut Vec<Bytes>,
    pending: &Mutex<VecDeque<Pending>>,
    wake: &Notify,
    deadline: Instant,
) {
    if jobs.is_empty() {
        return;
    }
    let was_empty = {
        let mut p = pending.lock().expect("pending lock is never poisoned");
        let was_empty = p.is_empty();
        for job in jobs.drain(..) {
            batch.push(job.bytes.clone());
            p.push_back(Pending {
                bytes: job.bytes,
                count: job.count,
                tx: job.tx,
                deadline,
                retried: job.retried,
            });
        }
        was_empty
    };
    if was_empty {
        wake.notify_one();
    }
}

pub(super) async fn read_loop(
    mut rd: ReadHalf,
    pending: &Mutex<VecDeque<Pending>>,
    wake: &Notify,
    timeout: Duration,
    addr: &Arc<str>,
    metrics: &Metrics,
    proto: Proto,
) -> UpstreamError {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Progress through the oldest waiter's replies: frames seen, bytes they span.
    let (mut frames, mut scanned) = (0u32, 0usize);
    // The oldest waiter's replies hold a `-READONLY` error: the node is a replica now.
    let mut readonly = false;
    loop {
        // Complete every waiter whose replies are all in the buffer.
        loop {
            let want = match pending
                .lock()
                .expect("pending lock is never poisoned")
                .front()
            {
                Some(p) => p.count,
                None => break,
            };
            while frames < want {
                match reply::frame(&buf[scanned..], proto) {
                    Ok(Some(f)) => {
                        // Shared connections never subscribe or track, so every frame,
                        // a RESP3 push included, answers a request.
                        if f.kind == ReplyKind::Error {
                            metrics.upstream_error_replies.inc();
                            readonly |= buf[scanned..].starts_with(b"-READONLY ");
                        }
                        scanned += f.len;
                        frames += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return UpstreamError::Protocol {
                            addr: addr.clone(),
                            detail: e.to_string().into(),
                        }
                    }
                }
            }
            if frames < want {
                break;
            }
            if std::mem::take(&mut readonly)
                && pending
                    .lock()
                    .expect("pending lock is never poisoned")
                    .front()
                    .is_some_and(|p| !p.retried)
            {
                return UpstreamError::ReadOnly { addr: addr.clone() };
            }
            let replies = buf.split_to(scanned).freeze();
            (frames, scanned) = (0, 0);
            let p = pending
                .lock()
                .expect("pending lock is never poisoned")
                .pop_front()
                .expect("the front waiter was seen above and only this loop pops");
            let _ = p.tx.send(Ok(replies));
        }
        if !buf.is_empty()
            && pending
                .lock()
                .expect("pending lock is never poisoned")
                .is_empty()
        {
            return UpstreamError::Protocol {
                addr: addr.clone(),
                detail: "reply with no request waiting for it".into(),
            };
        }
        let deadline = pending
            .lock()
            .expect("pending lock is never poisoned")
            .front()
            .map(|p| p.deadline);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let read = match deadline {
            Some(d) => tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                _ = tokio::time::sleep_until(d) => {
                    return UpstreamError::Timeout { addr: addr.clone(), after: timeout };
                }
            },
            None => tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                _ = wake.notified() => continue,
            },
        };
        match read {
            Ok(0) => return UpstreamError::Closed { addr: addr.clone() },
            Ok(_) => {}
            Err(e) => {
                return UpstreamError::Unavailable {
                    addr: addr.clone(),
                    detail: e.to_string().into(),
                }
            }
        }
    }
}
