//! libtorch's CPU memory while petal trains: a caching allocator (csrc/tensor_cache.cpp) that
//! keeps the large tensors a step frees and hands them back to the next step, instead of
//! returning them to the kernel and faulting their pages in again (a third of a MobileNetV2
//! step on a 2-core node, BENCHMARKS.md). It is on only while a run trains ([`session`]); when
//! the last one ends everything held is freed.
//!
//! Bounds: at most `jobs.tensor_cache_bytes` freed bytes held, and never more held plus in use
//! than 1.5 times what the run itself had in use at once (counted in the blocks it was given:
//! sizes round up to classes, eight per power of two, and a request may take a held block up to
//! 1.5 times its size).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

extern "C" {
    fn petal_tensor_cache_configure(cap: u64, min_bytes: u64, new_run: std::ffi::c_int);
    fn petal_tensor_cache_stats(out: *mut u64);
}

/// Smaller tensors go straight to malloc, which keeps them in its own heap without faults.
const MIN_BYTES: u64 = 256 << 10;

/// Until `set_limit` is called: 8 GiB, `jobs.tensor_cache_bytes`'s default.
static LIMIT: AtomicU64 = AtomicU64::new(8 << 30);
/// Training runs in progress.
static ACTIVE: Mutex<usize> = Mutex::new(0);

/// Sets the most freed bytes kept for reuse while training (0: none); from the configuration at
/// start-up. Applies at once to runs in progress.
pub fn set_limit(bytes: u64) {
    let active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    LIMIT.store(bytes, Ordering::Relaxed);
    if *active > 0 {
        configure(bytes, false);
    }
}

/// The cache on for as long as the value lives (one training run); the last one dropped frees
/// everything held.
#[must_use = "the cache is on only while the session lives"]
pub struct Session(());

pub fn session() -> Session {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    if *active == 0 {
        configure(LIMIT.load(Ordering::Relaxed), true);
    }
    *active += 1;
    Session(())
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        *active -= 1;
        if *active == 0 {
            configure(0, false);
        }
    }
}

fn configure(cap: u64, new_run: bool) {
    // SAFETY: plain values; the shim takes its own lock.
    unsafe { petal_tensor_cache_configure(cap, MIN_BYTES, new_run.into()) }
}

/// The cache's counters since the process started (bytes of blocks of at least 256 KiB, rounded
/// to their size classes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Requests served from a held block.
    pub hits: u64,
    /// Requests that allocated (while the cache was on).
    pub misses: u64,
    /// Held blocks freed to make room under the bounds.
    pub evictions: u64,
    pub held_bytes: u64,
    pub in_use_bytes: u64,
    /// Most bytes in use at once since the current (or last) run began.
    pub high_water_bytes: u64,
}

pub fn stats() -> Stats {
    let mut v = [0u64; 6];
    // SAFETY: the shim writes six u64.
    unsafe { petal_tensor_cache_stats(v.as_mut_ptr()) };
    Stats { hits: v[0], misses: v[1], evictions: v[2], held_bytes: v[3], in_use_bytes: v[4], high_water_bytes: v[5] }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;

    /// Runs test `name` of this binary alone in a child process: the cache is the process's, and
    /// the other tests of this binary allocate tensors at the same time.
    fn alone(name: &str) -> bool {
        if std::env::var_os("PETAL_TEST_ALONE").is_some() {
            return true;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env("PETAL_TEST_ALONE", "1")
            .output()
            .expect("runs the test binary");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{name} alone:\n{text}");
        false
    }

    fn mib(n: i64) -> Tensor {
        Tensor::ones([n << 18], (Kind::Float, tch::Device::Cpu)) // n MiB of f32
    }

    #[test]
    fn freed_blocks_are_reused_within_bounds_and_freed_when_the_run_ends() {
        if !alone("train::tensor_cache::tests::freed_blocks_are_reused_within_bounds_and_freed_when_the_run_ends") {
            return;
        }
        // Off outside a run: nothing is held.
        drop(mib(4));
        assert_eq!(stats().held_bytes, 0);

        let run = session();
        let before = stats();
        let a = mib(4);
        let addr = a.data_ptr();
        drop(a);
        assert_eq!(stats().held_bytes, 4 << 20);
        // The same size again: the same block, no allocation.
        let b = mib(4);
        assert_eq!(b.data_ptr(), addr);
        let s = stats();
        assert_eq!((s.hits - before.hits, s.misses - before.misses), (1, 1), "{s:?}");
        assert_eq!(s.held_bytes, 0);
        // Sizes round up to classes of 1/8 of a power of two: 4 MiB + 1 byte takes 4.5 MiB.
        let c = Tensor::ones([(4 << 20) + 1], (Kind::Int8, tch::Device::Cpu));
        drop(c);
        let d = Tensor::ones([(9 << 19) - 7], (Kind::Int8, tch::Device::Cpu));
        assert_eq!(stats().hits - before.hits, 2);
        drop(d);
        drop(b);

        // The high-water mark: 8.5 MiB were in use at once; 16 MiB more may not be added to the
        // 8.5 MiB held (over 1.5 × 8.5 and over 16), so they are freed first.
        let s = stats();
        assert_eq!((s.in_use_bytes, s.held_bytes, s.high_water_bytes), (0, 17 << 19, 17 << 19), "{s:?}");
        let e = mib(16);
        let s = stats();
        assert_eq!((s.held_bytes, s.in_use_bytes), (0, 16 << 20), "{s:?}");
        assert!(s.evictions - before.evictions >= 2, "{s:?}");
        drop(e);

        // The cap: a smaller one applies at once, and a block larger than it is not kept.
        set_limit(8 << 20);
        assert_eq!(stats().held_bytes, 0, "16 MiB > 8 MiB");
        let six = mib(6);
        let addr = six.data_ptr();
        drop(six);
        assert_eq!(stats().held_bytes, 6 << 20);
        // A request takes a held block up to 1.5 × its size, never a larger one.
        let five = mib(5);
        assert_eq!(five.data_ptr(), addr);
        drop(five);
        let three = mib(3);
        assert_ne!(three.data_ptr(), addr);
        drop(three);
        drop(mib(12));
        assert!(stats().held_bytes <= 8 << 20);
        let s = stats();
        assert!(s.held_bytes + s.in_use_bytes <= s.high_water_bytes * 3 / 2, "{s:?}");

        // Small tensors are malloc's.
        let small = Tensor::ones([1000], (Kind::Float, tch::Device::Cpu));
        drop(small);
        assert!(stats().held_bytes <= 8 << 20);

        // The last run ends: everything held is freed.
        drop(mib(6));
        let second = session();
        drop(run);
        assert!(stats().held_bytes > 0, "one run still trains");
        drop(second);
        assert_eq!(stats().held_bytes, 0);
        set_limit(8 << 30);
    }

    /// A few training steps of a real backbone; every variable after them.
    fn train_a_little() -> Vec<(String, Tensor)> {
        use crate::train::{arch::Arch, model::Model, optim::Adam};
        tch::manual_seed(3);
        let model = Model::new(Arch::MobilenetV2.network(5), tch::Device::Cpu);
        let params = model.trainable().into_iter().map(|(_, t)| t).collect();
        let mut adam = Adam::new(Default::default(), vec![("all".into(), 1e-3, params)]);
        let x = Tensor::randn([4, 3, 96, 96], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 4]);
        for _ in 0..3 {
            adam.zero_grad();
            model.forward(&x, true).cross_entropy_for_logits(&y).backward();
            adam.step(None).expect("adam");
        }
        model.state_dict()
    }

    #[test]
    fn training_with_the_cache_gives_the_same_weights_as_without() {
        if !alone("train::tensor_cache::tests::training_with_the_cache_gives_the_same_weights_as_without") {
            return;
        }
        set_limit(0);
        let without = {
            let _run = session();
            train_a_little()
        };
        set_limit(8 << 30);
        let before = stats();
        let with = {
            let _run = session();
            train_a_little()
        };
        let s = stats();
        assert!(s.hits - before.hits > 50, "the steps reused blocks: {s:?}");
        assert_eq!(without.len(), with.len());
        for ((name, a), (_, b)) in without.iter().zip(&with) {
            assert!(a.equal(b), "{name} differs");
        }
    }
}
