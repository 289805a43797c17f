//! Programs verified side by side. The kernel's verifier is most of a start (563 of
//! 750 ms of `BPF_PROG_LOAD` on this machine; in a Debian 12 guest one CPU of two
//! busy for the 14 s a daemon took to load): it runs in the loading thread and a
//! privileged load takes no lock across programs, so with a thread per CPU a start
//! takes about the longest share instead of the sum. Only the loading is shared out:
//! attaching (and what names a failure) stays in the loader's own order, so a program
//! that failed to load here is loaded again there, where its error is said.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use aya::{Btf, Ebpf, programs::Program};

use super::rawtp::{BTF_TPS, IOU_TPS, WITNESS};
use crate::kernel::{btf::KernelBtf, observe::Tier, tracefs::TraceFs};

/// At most this many loads at once: the verifier's memory for a large program is
/// tens of MiB, and a start gains nothing past the CPUs.
const MAX_WORKERS: usize = 4;

/// Runs `load` on every item, on up to one thread per CPU, each thread taking the
/// next item when it is done (a program can take a hundred times another's time).
pub fn load_each<T: Send>(items: &mut [T], load: impl Fn(&mut T) + Sync) {
    let workers =
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS).min(items.len());
    if workers <= 1 {
        items.iter_mut().for_each(load);
        return;
    }
    let queue = Mutex::new(items.iter_mut());
    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    let work = || {
        while let Some(item) = next() {
            load(item);
        }
    };
    std::thread::scope(|s| {
        // This thread is one of the workers: where no other can be made (a limit
        // on threads), it loads them all.
        for _ in 1..workers {
            if let Err(e) = std::thread::Builder::new().spawn_scoped(s, work) {
                tracing::debug!("a thread to load programs: {e}");
                break;
            }
        }
        work();
    });
}

/// What the loader's loop loads (`Sensors::load`), told apart by the same tests:
/// not the other tier's programs, nor those of a tracepoint, form or hook this
/// kernel lacks. Loading one the loop then skips would cost its verification only.
pub(super) struct Wanted<'a> {
    pub tier: Tier,
    pub lsm: bool,
    pub kbtf: &'a KernelBtf,
    pub tracefs: &'a TraceFs,
    pub fits: &'a BTreeMap<&'static str, bool>,
    pub iou_paths: bool,
}

impl Wanted<'_> {
    fn wants(&self, name: &str, prog: &Program) -> bool {
        match prog {
            Program::TracePoint(_) => match name.starts_with("sys_") {
                true => self.tier != Tier::Fexit && self.tracefs.check_syscall(name).is_ok(),
                false => self.tracefs.format("io_uring", name).is_ok(),
            },
            Program::CgroupSockAddr(_) | Program::CgroupSkb(_) => true,
            Program::BtfTracePoint(_) => {
                name != WITNESS
                    && self.fits.get(name) == Some(&true)
                    && (self.iou_paths || !IOU_TPS.contains(&name))
            }
            Program::Lsm(_) => {
                self.lsm && crate::kernel::lsm::HOOKS.contains(&name) && self.kbtf.has_lsm_hook(name)
            }
            _ => false,
        }
    }

    /// Loads, side by side, every program the loop will load. Errors are left for
    /// the loop: it loads a program that is not loaded yet again, and says why.
    pub fn preload(&self, ebpf: &mut Ebpf, btf: &Btf) {
        let mut jobs: Vec<(&str, &mut Program)> =
            ebpf.programs_mut().filter(|(name, prog)| self.wants(name, prog)).collect();
        load_each(&mut jobs, |(name, prog)| {
            let _ = match prog {
                Program::TracePoint(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                Program::CgroupSkb(p) => p.load(),
                Program::BtfTracePoint(p) => match BTF_TPS.iter().find(|(n, _, _)| n == name) {
                    Some((_, tp, _)) => p.load(tp, btf),
                    None => Ok(()),
                },
                Program::Lsm(p) => p.load(name, btf),
                _ => Ok(()),
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[test]
    fn every_item_is_loaded_once() {
        let mut items: Vec<(usize, usize)> = (0..37).map(|i| (i, 0)).collect();
        load_each(&mut items, |(_, n)| *n += 1);
        assert!(items.iter().all(|&(_, n)| n == 1), "{items:?}");
        load_each(&mut Vec::<u8>::new(), |_| unreachable!());
    }

    #[test]
    fn loads_overlap_when_there_are_cpus() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut items = vec![(); 4];
        load_each(&mut items, |_| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            now.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(most.load(Ordering::SeqCst) >= 2, "the loads ran one at a time (this test needs two CPUs)");
    }
}
