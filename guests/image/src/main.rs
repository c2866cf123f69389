//! The hvlab guest image: the runtime plus every workload; the command line picks one.
#![no_std]
#![no_main]

mod multiboot;

use hvlab_guest_rt::{Ctx, Fail};

/// Called by the runtime once the machine is up.
#[unsafe(no_mangle)]
fn hvlab_workload_main(ctx: &mut Ctx) -> Result<(), Fail> {
    hvlab_workloads::run(ctx)
}
