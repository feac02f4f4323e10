// A caching CPU allocator for libtorch, used while petal trains (src/train/tensor_cache.rs).
//
// libtorch's default CPU allocator hands every tensor to malloc, which maps a large block fresh
// from the kernel and unmaps it when it is freed. A training step allocates and frees the same
// large tensors (activations, their gradients) every step, so every step faults all of their
// pages in again, each zeroed by the kernel: about 250,000 page faults (1 GB) per MobileNetV2
// step at batch 16, a third of the step's time on a small CPU node. This allocator keeps freed
// large blocks and hands them back out: a request takes the held block of the smallest size
// class that fits it, up to 1.5 times its size.
//
// Bounds: it never holds more freed bytes than `cap`, and never lets the blocks it holds plus
// those in use exceed 1.5 times the most bytes the workload itself had in use at once (its
// high-water mark): a request that finds no block first frees held blocks (oldest first) until
// it fits under that. (With no slack at all a step's later requests kept evicting the blocks
// its next step needed: a ResNet18 step at batch 16 missed 40 % of the time; with 1.5 the misses
// are the first step's.) Configuring it with a cap of 0 frees everything held (petal does when
// the last training run of the process ends).
//
// Blocks smaller than `min_bytes` and all blocks while the cache is off go straight to
// c10::alloc_cpu / c10::free_cpu, as with the default allocator.
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

// Rounds `n` up to its size class: eight classes per power of two (at most 1/8 more), 4 KiB at
// least between classes.
size_t size_class(size_t n) {
  if (n <= 4096) return 4096;
  int log2 = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
  size_t step = size_t{1} << (log2 > 15 ? log2 - 3 : 12);
  return (n + step - 1) / step * step;
}

struct Stats {
  uint64_t hits = 0, misses = 0, evictions = 0, cached_bytes = 0, live_bytes = 0, high_water = 0;
};

class TensorCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (cap_.load(std::memory_order_relaxed) == 0 || n < min_bytes_.load(std::memory_order_relaxed)) {
      void* p = c10::alloc_cpu(n);
      return {p, p, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
    }
    size_t size = size_class(n);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      p = take(size);
      if (p) {
        stats_.hits++;
      } else {
        stats_.misses++;
        make_room(size);
      }
    }
    if (!p) p = c10::alloc_cpu(size);  // outside the lock: the kernel may take its time
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_.emplace(p, size);
      stats_.live_bytes += size;
      if (stats_.live_bytes > stats_.high_water) stats_.high_water = stats_.live_bytes;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  // New bounds; 0 frees everything held and turns the cache off. `new_run`: the workload starting
  // now sets its own high-water mark.
  void configure(uint64_t cap, uint64_t min_bytes, bool new_run) {
    std::lock_guard<std::mutex> lock(mu_);
    cap_ = cap;
    min_bytes_ = min_bytes;
    while (stats_.cached_bytes > cap) evict_oldest();
    if (new_run) stats_.high_water = stats_.live_bytes;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  static TensorCache& instance() {
    static TensorCache* cache = new TensorCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

 private:
  struct Held {
    void* ptr;
    size_t size;
  };

  static void release(void* p) { instance().give_back(p); }

  void give_back(void* p) {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        size_t size = it->second;
        live_.erase(it);
        stats_.live_bytes -= size;
        uint64_t cap = cap_.load(std::memory_order_relaxed);
        if (cap > 0 && size <= cap) {
          while (stats_.cached_bytes + size > cap) {
            evict_oldest();
            stats_.evictions++;
          }
          order_.push_back({p, size});
          free_[size].push_back(std::prev(order_.end()));
          stats_.cached_bytes += size;
          return;
        }
      }
    }
    c10::free_cpu(p);
  }

  // The held block of the smallest class from `size` up to 1.5 × `size` (of that class, the most
  // recently freed), or null; `size` becomes the block's.
  void* take(size_t& size) {
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 2) return nullptr;
    auto held = it->second.back();
    it->second.pop_back();
    if (it->second.empty()) free_.erase(it);
    void* p = held->ptr;
    size = held->size;
    order_.erase(held);
    stats_.cached_bytes -= size;
    return p;
  }

  // Frees held blocks, oldest first, until `size` more bytes in use stay under 1.5 × the
  // high-water mark (or nothing is held).
  void make_room(size_t size) {
    uint64_t limit = std::max<uint64_t>(stats_.high_water + stats_.high_water / 2, stats_.live_bytes + size);
    while (!order_.empty() && stats_.live_bytes + stats_.cached_bytes + size > limit) {
      evict_oldest();
      stats_.evictions++;
    }
  }

  void evict_oldest() {
    Held held = order_.front();
    auto same = free_.find(held.size);
    auto& blocks = same->second;
    for (size_t i = 0; i < blocks.size(); i++) {
      if (blocks[i] == order_.begin()) {
        blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    if (blocks.empty()) free_.erase(same);
    order_.pop_front();
    stats_.cached_bytes -= held.size;
    c10::free_cpu(held.ptr);
  }

  std::mutex mu_;
  std::atomic<uint64_t> cap_{0}, min_bytes_{1 << 18};
  std::unordered_map<void*, size_t> live_;                            // blocks in use, by pointer
  std::list<Held> order_;                                             // held blocks, oldest first
  std::map<size_t, std::vector<std::list<Held>::iterator>> free_;  // held, by size class
  Stats stats_;
};

std::once_flag installed;

}  // namespace

extern "C" {
// Makes the cache libtorch's CPU allocator (once; tensors allocated before keep their deleters)
// and sets its bounds: `cap` bytes held at most (0: off, every block goes straight back),
// blocks of at least `min_bytes`. A cap of 0 frees what is held. `new_run`: the high-water mark
// starts again from the bytes in use now.
void petal_tensor_cache_configure(uint64_t cap, uint64_t min_bytes, int new_run) {
  std::call_once(installed, [] { c10::SetAllocator(c10::DeviceType::CPU, &TensorCache::instance(), 1); });
  TensorCache::instance().configure(cap, min_bytes, new_run != 0);
}

// hits, misses, evictions, bytes held, bytes in use, high-water mark of bytes in use (blocks of
// at least `min_bytes`, rounded to their classes).
void petal_tensor_cache_stats(uint64_t* out) {
  Stats s = TensorCache::instance().stats();
  uint64_t v[6] = {s.hits, s.misses, s.evictions, s.cached_bytes, s.live_bytes, s.high_water};
  std::memcpy(out, v, sizeof v);
}
}
