//! The convenience layer for Rust users: write a process as a handler of events, with no
//! state machine of your own. `HandlerProcess` turns a [`Handler`] into a [`Process`]: each
//! event is one reduction, and the step yields when the budget is spent.

use crate::context::Context;
use crate::error::Error;
use crate::process::{Event, Events, ExitResult, Process, Status};
use crate::value::Value;

/// What a handler wants after an event.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Exit(ExitResult),
}

impl Flow {
    /// Exit normally with `v`.
    pub fn stop(v: impl Into<Value>) -> Flow {
        Flow::Exit(Ok(v.into()))
    }
    /// Exit abnormally.
    pub fn fail(e: Error) -> Flow {
        Flow::Exit(Err(e))
    }
}

pub trait Handler: Send + 'static {
    /// Called once, first, with the spawn arguments.
    fn started(&mut self, cx: &mut Context<'_>, args: Vec<Value>) -> Flow {
        let _ = (cx, args);
        Flow::Continue
    }
    /// Called for every message, lifecycle event and command completion, in arrival order.
    fn handle(&mut self, cx: &mut Context<'_>, event: Event) -> Flow;
    /// Called once when the process ends, whatever the reason.
    fn stopped(&mut self, cx: &mut Context<'_>, result: &ExitResult) {
        let _ = (cx, result);
    }
}

/// A closure as a handler: `handler_fn(|cx, ev| ...)`.
pub struct FnHandler<F>(pub F);

impl<F> Handler for FnHandler<F>
where
    F: FnMut(&mut Context<'_>, Event) -> Flow + Send + 'static,
{
    fn handle(&mut self, cx: &mut Context<'_>, event: Event) -> Flow {
        (self.0)(cx, event)
    }
}

pub fn handler_fn<F>(f: F) -> HandlerProcess<FnHandler<F>>
where
    F: FnMut(&mut Context<'_>, Event) -> Flow + Send + 'static,
{
    HandlerProcess(FnHandler(f))
}

/// A [`Handler`] as a [`Process`].
pub struct HandlerProcess<H>(pub H);

impl<H: Handler> Process for HandlerProcess<H> {
    fn init(&mut self, cx: &mut Context<'_>, _method: &str, args: Vec<Value>) -> Status {
        match self.0.started(cx, args) {
            Flow::Continue => Status::Wait,
            Flow::Exit(r) => Status::Exit(r),
        }
    }

    #[inline]
    fn step(&mut self, cx: &mut Context<'_>, events: &mut Events<'_>) -> Status {
        while let Some(ev) = events.next() {
            if let Flow::Exit(r) = self.0.handle(cx, ev) {
                return Status::Exit(r);
            }
            if !cx.consume(1) {
                return if events.is_empty() { Status::Wait } else { Status::Yield };
            }
        }
        Status::Wait
    }

    fn close(&mut self, cx: &mut Context<'_>, result: &ExitResult) {
        self.0.stopped(cx, result)
    }
}
