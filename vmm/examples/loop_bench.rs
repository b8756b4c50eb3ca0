//! The event loop's dispatch cost: one device re-arms its queue event 1,000,000 times among four
//! registered devices; prints the best of 5 runs per event (epoll wait, eventfd read and write,
//! dispatch to the device).
//!
//! Run: `cargo run --release -p hull-vmm --example loop_bench`
use hull_vmm::devices::virtio::{DeviceType, VirtioCommon, VirtioDevice};
use hull_vmm::event_loop::EventLoop;
use hull_vmm::exit::{ExitNotifier, ExitReason};
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Spin {
    common: VirtioCommon,
    n: u64,
    limit: u64,
    exit: Arc<ExitNotifier>,
}
impl VirtioDevice for Spin {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, _: u64, _: &mut [u8]) {}
    fn process_queue(&mut self, _: usize) {
        self.n += 1;
        if self.n >= self.limit {
            self.exit.notify(ExitReason::Stopped)
        } else {
            self.common.rearm(0)
        }
    }
}
fn main() {
    let limit = 1_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut el = EventLoop::new(exit.clone()).unwrap();
        let mut first = None;
        for i in 0..4 {
            let d = Arc::new(Mutex::new(Spin {
                common: VirtioCommon::new(DeviceType::Block, 0, &[16, 16]).unwrap(),
                n: 0,
                limit: if i == 0 { limit } else { u64::MAX },
                exit: exit.clone(),
            }));
            el.add_device(d.clone()).unwrap();
            first.get_or_insert(d);
        }
        first.unwrap().lock().unwrap().common.rearm(0);
        exit.event().read().ok();
        let t = Instant::now();
        // kick device 0 through its queue event: first device registered
        let _ = el.run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{limit} dispatches: best {:.3} s, {:.0} ns/event",
        best,
        best * 1e9 / limit as f64
    );
}
