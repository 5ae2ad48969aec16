//! [`Pending`]: the future of one request's answer.
//!
//! Behind the pump, the pump answers (reply, Reject, deadline, shutdown) and `Pending` only
//! waits; dropping it early asks the pump to cancel. In-memory stages have no pump, so there
//! `Pending` keeps the request's deadline itself (a timer: 504, and the request goes into the
//! shared cancel set that workers' interrupt checks read) and does the in-flight accounting.

use crate::answer::{deadline_passed, shutting_down, Answer, Failure};
use crate::server::pump::Command;
use crate::server::{Dispatch, Shared};
use crate::wire::TraceId;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::oneshot;

enum State {
    Waiting(oneshot::Receiver<Answer>),
    Ready(Option<Answer>),
    Done,
}

/// The answer to a submitted request, to come. Dropping it before it resolves cancels the
/// request: the workers holding it are interrupted.
#[must_use = "dropping a Pending cancels its request"]
pub struct Pending {
    state: State,
    id: u64,
    trace_id: TraceId,
    shared: Arc<Shared>,
    /// In-memory stages only (the pump keeps the deadlines otherwise).
    deadline: Option<Deadline>,
    /// In-memory stages only: when the request was submitted, in µs since the epoch (its job
    /// header's arrival time; 0 when the pump times it).
    arrival_us: u64,
}

/// A deadline kept by the waiting side; the timer is made on the first poll, inside the runtime
/// (a request may be submitted outside one).
enum Deadline {
    At(Instant),
    Timer(Pin<Box<tokio::time::Sleep>>),
}

impl Pending {
    /// A request on its way: its answer comes on `rx`. `deadline` is for in-memory stages.
    pub(crate) fn waiting(
        id: u64,
        trace_id: TraceId,
        shared: Arc<Shared>,
        rx: oneshot::Receiver<Answer>,
        deadline: Option<Instant>,
        arrival_us: u64,
    ) -> Pending {
        let memory = matches!(shared.dispatch, Dispatch::Memory { .. });
        Pending {
            state: State::Waiting(rx),
            id,
            trace_id,
            shared,
            deadline: deadline.map(Deadline::At),
            arrival_us: if memory { arrival_us } else { 0 },
        }
    }

    /// A request answered before it entered the pipeline (limits, shutdown).
    pub(crate) fn answered(
        id: u64,
        trace_id: TraceId,
        shared: Arc<Shared>,
        answer: Answer,
    ) -> Pending {
        Pending {
            state: State::Ready(Some(answer)),
            id,
            trace_id,
            shared,
            deadline: None,
            arrival_us: 0,
        }
    }

    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's trace id, as its job carries it.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// In-memory stages: if the request's deadline has passed, its answer (and its workers are
    /// told to stop). A worker meets the same deadline at about the same instant and answers
    /// 504 too, counting it unless its answer finds the channel closed; so the channel is
    /// closed before this side counts: an answer already in it is the one (counted by its
    /// sender), otherwise this side's 504 is, and the worker's send fails and it takes its count
    /// back. Counting first would let both count one timeout.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Answer> {
        let mut timer = match self.deadline.take() {
            None => return None,
            Some(Deadline::At(at)) => Box::pin(tokio::time::sleep_until(at.into())),
            Some(Deadline::Timer(t)) => t,
        };
        if timer.as_mut().poll(cx).is_pending() {
            self.deadline = Some(Deadline::Timer(timer));
            return None;
        }
        let State::Waiting(rx) = &mut self.state else {
            return None;
        };
        rx.close();
        let answer = match rx.try_recv() {
            Ok(answer) => {
                if matches!(answer, Answer::Reply(_)) {
                    self.shared.stats.replied.fetch_add(1, Ordering::Relaxed);
                }
                answer
            }
            Err(_) => {
                self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                deadline_passed()
            }
        };
        self.end_in_memory();
        Some(answer)
    }

    /// In-memory stages: the request is over for this side (answered, timed out or cancelled);
    /// workers still holding it stop.
    fn end_in_memory(&self) {
        if let Dispatch::Memory { cancels, .. } = &self.shared.dispatch {
            self.shared.in_flight.leave();
            cancels.insert((self.shared.limits.server_id, self.id));
        }
    }
}

impl Future for Pending {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let memory = matches!(self.shared.dispatch, Dispatch::Memory { .. });
        let answer = match &mut self.state {
            State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(result) => {
                    let answer = result.unwrap_or_else(|_| shutting_down());
                    if memory {
                        // No pump counts it: this side does.
                        if matches!(answer, Answer::Reply(_)) {
                            self.shared.stats.replied.fetch_add(1, Ordering::Relaxed);
                        }
                        self.shared.in_flight.leave();
                    }
                    answer
                }
                Poll::Pending if memory => match self.expired(cx) {
                    Some(answer) => answer,
                    None => return Poll::Pending,
                },
                Poll::Pending => return Poll::Pending,
            },
            State::Ready(a) => a
                .take()
                .unwrap_or_else(|| Answer::Failed(Failure::new(500, "answer already taken"))),
            State::Done => Answer::Failed(Failure::new(500, "answer already taken")),
        };
        self.state = State::Done;
        if self.arrival_us != 0 {
            let took = crate::wire::now_us().saturating_sub(self.arrival_us);
            self.shared.stats.request_seconds.observe_us(took);
        }
        Poll::Ready(answer)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !matches!(self.state, State::Waiting(_)) {
            return;
        }
        match &self.shared.dispatch {
            Dispatch::Memory { .. } => {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                self.end_in_memory();
            }
            Dispatch::Pump { commands, .. } => {
                let _ = commands.send(Command::Cancel(self.id));
            }
        }
    }
}
