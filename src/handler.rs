//! The fault handler thread: reads fault events and hands each to the resolver.
//! Allocation failures follow the mapping's [`OnFull`](crate::OnFull) policy.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crate::engine::{Access, Engine, Failure, Resolved};
use crate::options::{FullAction, FullFault};
use crate::sys::{self, Fault, RawMsg};

pub(crate) fn spawn(engine: Arc<Engine>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("mkwrite-faults".into())
        .spawn(move || {
            if let Err(e) = run(&engine) {
                engine.set_handler_failure(e.to_string());
            }
        })
}

fn run(engine: &Engine) -> io::Result<()> {
    let mut msgs = [RawMsg::default(); 64];
    let mut faults = Vec::with_capacity(msgs.len());
    let mut parked: Vec<Fault> = Vec::new();
    loop {
        let ready = sys::wait_ready(&engine.uffd, &engine.doorbell)?;
        if ready.doorbell && engine.doorbell.take() {
            if engine.stopping.load(Ordering::SeqCst) {
                // Nobody may still be faulting on a mapping being dropped; any
                // thread parked here would never be woken, so fail it instead.
                for f in parked.drain(..) {
                    sigbus(engine, &f, "mapping closed while waiting for space".into());
                }
                return Ok(());
            }
            for f in std::mem::take(&mut parked) {
                handle(engine, f, &mut parked);
            }
        }
        if ready.faults {
            faults.clear();
            engine.uffd.read_faults(&mut faults, &mut msgs)?;
            for &f in &faults {
                engine.counters.fault(f.write, f.write_protect);
                handle(engine, f, &mut parked);
            }
        }
    }
}

/// Resolves one fault; a full store is decided by policy.
fn handle(engine: &Engine, fault: Fault, parked: &mut Vec<Fault>) {
    let started = Instant::now();
    let offset = fault.address - engine.region.base();
    let page = engine.geo.page_of(offset);
    let access = if fault.write { Access::Write } else { Access::Read };
    loop {
        let result = {
            let mut flags = engine.lock_flags();
            let result = engine.resolve(&mut flags, page, access);
            if let Ok(Resolved::AlreadyReady) = result {
                // Someone else resolved the page first; the faulting thread waits.
                if let Err(e) = engine.wake(page) {
                    engine.record_fault_error(format!("wake at {offset}: {e}"));
                }
            }
            result
        };
        match result {
            Ok(_) => break,
            Err(Failure::PastEof) => {
                sigbus(
                    engine,
                    &fault,
                    format!("access at {offset} is past the end of the file"),
                );
                break;
            }
            Err(Failure::Io(e)) => {
                sigbus(engine, &fault, format!("fault at {offset}: {e}"));
                break;
            }
            Err(Failure::Full(error)) => {
                let full = FullFault {
                    offset,
                    thread: fault.thread,
                    error: &error,
                };
                match engine.on_full.decide(&full) {
                    FullAction::Sigbus => sigbus(engine, &fault, format!("write at {offset}: {error}")),
                    FullAction::Wait => {
                        engine.counters.parked();
                        parked.push(fault);
                    }
                    FullAction::Retry => continue,
                }
                break;
            }
        }
    }
    engine.counters.handler_time(started.elapsed());
}

fn sigbus(engine: &Engine, fault: &Fault, why: String) {
    engine.record_fault_error(why);
    engine.counters.sigbus();
    // The thread may have exited meanwhile; there is nobody left to tell.
    let _ = sys::send_sigbus(fault.thread, fault.address);
}
