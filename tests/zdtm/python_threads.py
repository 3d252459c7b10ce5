"""python_threads: a CPython interpreter with three busy threads.

The harness runs this file with `/usr/bin/python3 -u` (unbuffered stdout).
Three threads count and append to their own lists (a window of the last
WINDOW values, the rest dropped as they go), each also bumps a total under
a shared lock, keeps its ident/native_id (the kernel tid) and a
threading.local() value.  The main thread sleeps in short time.sleep()s.

The SIGTERM handler (Python handlers run in the main thread) stops the
threads, joins them and checks: every list holds exactly the consecutive
values its counter says, the lock-protected total equals the sum of the
counters, each thread's tid, ident and thread-local value are unchanged,
each thread made progress after READY, os.getpid() is unchanged and
/proc/self/task holds exactly the threads we know.  It prints PASS or
FAIL lines and exits 0 or 1.
"""
import os
import signal
import sys
import threading
import time

NTHREADS = 3
WINDOW = 20000

stop = False
lock = threading.Lock()
total = 0
tls = threading.local()


class Worker(threading.Thread):
    def __init__(self, k):
        super().__init__(name="zt-py-%d" % k, daemon=True)
        self.k = k
        self.count = 0
        self.base = 0          # value of lst[0]
        self.lst = []
        self.tid = None
        self.errors = []
        self.started_evt = threading.Event()

    def run(self):
        global total
        self.tid = threading.get_native_id()
        my_ident = threading.get_ident()
        tls.value = ("worker", self.k, self.tid)
        lst = self.lst
        step = self.k + 1
        while not stop:
            for _ in range(100):
                lst.append(self.count * step)
                self.count += 1
                with lock:
                    total += 1
            if len(lst) > 2 * WINDOW:
                cut = len(lst) - WINDOW
                del lst[:cut]
                self.base += cut
            self.started_evt.set()
            time.sleep(0.0005)     # keep the GIL moving and the CPU cool
        if threading.get_native_id() != self.tid:
            self.errors.append("native_id %d, was %d"
                               % (threading.get_native_id(), self.tid))
        if threading.get_ident() != my_ident:
            self.errors.append("ident changed")
        if getattr(tls, "value", None) != ("worker", self.k, self.tid):
            self.errors.append("threading.local value is %r"
                               % (getattr(tls, "value", None),))


def fail(msg):
    print("FAIL: " + msg, flush=True)


def on_term(signum, frame):
    global stop
    if stop:
        return
    failed = False
    progress = [w.count for w in workers]
    time.sleep(0.05)
    for w, p in zip(workers, progress):
        if w.count <= p or w.count <= ready_counts[w.k]:
            fail("thread %d (tid %s) makes no progress (count %d, %d at READY)"
                 % (w.k, w.tid, w.count, ready_counts[w.k]))
            failed = True
    tasks = set(int(t) for t in os.listdir("/proc/self/task"))
    want = set([main_tid] + [w.tid for w in workers])
    if tasks != want:
        fail("/proc/self/task is %s, expected %s" % (sorted(tasks), sorted(want)))
        failed = True
    stop = True
    for w in workers:
        w.join(5)
        if w.is_alive():
            fail("thread %d did not stop" % w.k)
            failed = True
            continue
        step = w.k + 1
        n = len(w.lst)
        if w.base + n != w.count:
            fail("thread %d: %d values dropped + %d in the list != count %d"
                 % (w.k, w.base, n, w.count))
            failed = True
        elif w.lst != [(w.base + i) * step for i in range(n)]:
            bad = next(i for i, v in enumerate(w.lst) if v != (w.base + i) * step)
            fail("thread %d: list[%d] is %r, expected %d"
                 % (w.k, bad, w.lst[bad], (w.base + bad) * step))
            failed = True
        for e in w.errors:
            fail("thread %d: %s" % (w.k, e))
            failed = True
    if total != sum(w.count for w in workers):
        fail("total %d != sum of counts %d" % (total, sum(w.count for w in workers)))
        failed = True
    if os.getpid() != main_pid or threading.get_native_id() != main_tid:
        fail("pid/tid %d/%d, were %d/%d" % (os.getpid(), threading.get_native_id(),
                                           main_pid, main_tid))
        failed = True
    if getattr(tls, "value", None) != "main":
        fail("main thread's threading.local value is %r" % (getattr(tls, "value", None),))
        failed = True
    if not failed:
        print("PASS", flush=True)
    os._exit(1 if failed else 0)


main_pid = os.getpid()
main_tid = threading.get_native_id()
tls.value = "main"
signal.signal(signal.SIGTERM, on_term)
workers = [Worker(k) for k in range(NTHREADS)]
for w in workers:
    w.start()
for w in workers:
    if not w.started_evt.wait(10):
        print("FAIL: thread %d did not start" % w.k, flush=True)
        sys.exit(1)
ready_counts = [w.count for w in workers]
print("READY", flush=True)
while True:
    time.sleep(0.1)
