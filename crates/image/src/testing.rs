//! Test support (feature `testing`, and this crate's own tests): a sample process record with
//! one of everything, and a [`FileChecks`] that accepts every file description.

use crate::*;

/// Per-kind file checks that accept everything (the image crate's own tests check the generic
/// part of validation; the engine checks each kind).
pub struct NoFileChecks;

impl FileChecks for NoFileChecks {
    fn check(&self, _p: &ProcessImage) -> Result<(), String> {
        Ok(())
    }
}

/// A process record with one of everything: every kind of file description, mapping and
/// timer. Shared by the round-trip, validation and mutation tests of this crate and the engine.
pub fn sample_process() -> ProcessImage {
    ProcessImage {
        pid: 42,
        ppid: 1,
        pgid: 42,
        sid: 42,
        task: TaskState {
            comm: "demo".into(),
            exe_path: "/bin/demo".into(),
            exe_memfd: 0,
            cwd: "/tmp".into(),
            cwd_deleted: None,
            root: "/".into(),
            umask: 0o22,
            personality: 0,
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: 4096,
            }],
            pdeathsig: 0,
            dumpable: 1,
            child_subreaper: false,
            oom_score_adj: 100,
            loginuid: u32::MAX,
        },
        creds: Creds {
            uids: [0; 4],
            gids: [0; 4],
            groups: vec![0],
            cap_inheritable: 0,
            cap_permitted: u64::MAX >> 23,
            cap_effective: u64::MAX >> 23,
            cap_bounding: u64::MAX >> 23,
            cap_ambient: 0,
            no_new_privs: false,
            securebits: 0,
            keepcaps: false,
        },
        mm: MmFields {
            start_code: 0x400000,
            end_code: 0x401000,
            start_data: 0x402000,
            end_data: 0x403000,
            start_brk: 0x500000,
            brk: 0x521000,
            start_stack: 0x7ffc0000f000,
            arg_start: 0x7ffc0000f100,
            arg_end: 0x7ffc0000f200,
            env_start: 0x7ffc0000f200,
            env_end: 0x7ffc0000f300,
            auxv: vec![6, 4096, 0, 0],
        },
        vmas: vec![
            Vma {
                start: 0x400000,
                end: 0x401000,
                prot: 5,
                shared: false,
                growsdown: false,
                file_offset: 0,
                kind: VmaKind::File {
                    path: "/bin/demo".into(),
                    dev: 1,
                    ino: 2,
                    size: 4096,
                },
                name: "/bin/demo".into(),
                shmem_id: 0,
                advice: VmaAdvice::default(),
            },
            Vma {
                start: 0x500000,
                end: 0x521000,
                prot: 3,
                shared: false,
                growsdown: false,
                file_offset: 0,
                kind: VmaKind::Anonymous,
                name: "[heap]".into(),
                shmem_id: 0,
                advice: VmaAdvice {
                    dontdump: true,
                    hugepage: true,
                    locked: true,
                    ..VmaAdvice::default()
                },
            },
            Vma {
                start: 0x600000,
                end: 0x602000,
                prot: 3,
                shared: true,
                growsdown: false,
                file_offset: 0,
                kind: VmaKind::Memfd { memfd_id: 66 },
                name: "/memfd:shm (deleted)".into(),
                shmem_id: 0,
                advice: VmaAdvice::default(),
            },
            Vma {
                start: 0x7ffc00000000,
                end: 0x7ffc00010000,
                prot: 3,
                shared: false,
                growsdown: true,
                file_offset: 0,
                kind: VmaKind::Anonymous,
                name: "[stack]".into(),
                shmem_id: 0,
                advice: VmaAdvice::default(),
            },
            Vma {
                start: 0x7ffd00000000,
                end: 0x7ffd00004000,
                prot: 1,
                shared: false,
                growsdown: false,
                file_offset: 0,
                kind: VmaKind::Vvar,
                name: "[vvar]".into(),
                shmem_id: 0,
                advice: VmaAdvice::default(),
            },
            Vma {
                start: 0x7ffd00004000,
                end: 0x7ffd00006000,
                prot: 5,
                shared: false,
                growsdown: false,
                file_offset: 0,
                kind: VmaKind::Vdso,
                name: "[vdso]".into(),
                shmem_id: 0,
                advice: VmaAdvice::default(),
            },
        ],
        page_runs: vec![PageRun::raw(0x500000, 2, 0, 1)],
        files: vec![
            FileDesc {
                id: 0,
                flags: 2,
                pos: 0,
                kind: FileKind::CharDevice {
                    path: "/dev/null".into(),
                    rdev: 0x103,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 1,
                flags: 0,
                pos: 0,
                kind: FileKind::Pipe {
                    pipe_id: 9,
                    write_end: false,
                    capacity: 65536,
                    data: b"hi".to_vec(),
                },
                owner: FileOwner {
                    kind: 1,
                    pid: 42,
                    signal: 0,
                },
                locks: vec![DescLock {
                    kind: DescLockKind::Ofd,
                    range: LockRange {
                        write: false,
                        start: 10,
                        end: None,
                    },
                    pid: -1,
                }],
            },
            FileDesc {
                id: 2,
                flags: 0o4002,
                pos: 0,
                kind: FileKind::EventFd {
                    count: 0x1_0000_0005,
                    semaphore: true,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 3,
                flags: 2,
                pos: 0,
                kind: FileKind::TimerFd {
                    clockid: 0,
                    settime_flags: 3,
                    ticks: 2,
                    interval_ns: 1_000_000,
                    remaining_ns: 5_000,
                    deadline_ns: 1_700_000_000_000_000_000,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 4,
                flags: 2,
                pos: 0,
                kind: FileKind::SignalFd { mask: 1 << 9 },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 5,
                flags: 2,
                pos: 0,
                kind: FileKind::Epoll {
                    owner: 42,
                    watches: vec![EpollWatch {
                        fd: 3,
                        events: 0x8000_0019,
                        data: 0x1122_3344_5566_7788,
                        through: None,
                    }],
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 6,
                flags: 0o100002,
                pos: 17,
                kind: FileKind::Memfd {
                    memfd_id: 66,
                    name: "shm".into(),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    seals: 6,
                    len: 8192,
                    crc: 7,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 7,
                flags: 0o4000,
                pos: 0,
                kind: FileKind::Inotify {
                    watches: vec![
                        InotifyWatch {
                            wd: 1,
                            path: "/tmp/watched".into(),
                            mask: 0x8000_0fff,
                            sdev: 0xfe0_0000,
                            ino: 0x99_0598,
                        },
                        InotifyWatch {
                            wd: 3,
                            path: "/tmp/watched/file".into(),
                            mask: 0x0400_0002,
                            sdev: 0xfe0_0000,
                            ino: 0x99_0599,
                        },
                    ],
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 8,
                flags: 0o2002,
                pos: 5,
                kind: FileKind::Regular {
                    path: "/tmp/data".into(),
                    dev: 1,
                    ino: 3,
                    size: 10,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 9,
                flags: 2,
                pos: 1,
                kind: FileKind::Deleted {
                    path: "/tmp/gone".into(),
                    dev: 2049,
                    ino: 77,
                    mode: 0o600,
                    uid: 1000,
                    gid: 100,
                    size: 1 << 30,
                    extents: vec![(0, 2), (1 << 29, 2)],
                    atime: (1_500_000_000, 1),
                    mtime: (1_600_000_000, 2),
                    len: 4,
                    crc: 5,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 10,
                flags: 0o200000,
                pos: 0,
                kind: FileKind::Directory {
                    path: "/tmp".into(),
                    dev: 1,
                    ino: 2,
                    deleted: None,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 11,
                flags: 2,
                pos: 0,
                kind: FileKind::ServiceSocket {
                    reply: b"restored".to_vec(),
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 12,
                flags: 0o100000,
                pos: 0,
                kind: FileKind::Fifo {
                    path: "/tmp/fifo".into(),
                    dev: 1,
                    ino: 4,
                    deleted: false,
                    mode: 0o600,
                    capacity: 65536,
                    data: b"in flight".to_vec(),
                },
                owner: FileOwner {
                    kind: 0,
                    pid: 42,
                    signal: 35,
                },
                locks: Vec::new(),
            },
            FileDesc {
                id: 13,
                flags: 0o10400000,
                pos: 0,
                kind: FileKind::OPath {
                    path: "/tmp/link".into(),
                    dev: 1,
                    ino: 5,
                    mode: 0o120000,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 14,
                flags: 0o4002,
                pos: 0,
                kind: FileKind::Pidfd { pid: 42 },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 15,
                flags: 2,
                pos: 0,
                kind: FileKind::NetlinkSocket {
                    ty: 3,
                    protocol: 0,
                    port_id: 42,
                    groups: vec![1, 2],
                    dst_port_id: 0,
                    dst_group: 0,
                    options: NetlinkOptions {
                        ext_ack: true,
                        ..Default::default()
                    },
                    common: SocketCommon {
                        rcvbuf: 212992,
                        sndbuf: 212992,
                        filter: vec![SockFilterInsn {
                            code: 6,
                            jt: 0,
                            jf: 0,
                            k: 0xffff,
                        }],
                        ..Default::default()
                    },
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 16,
                flags: 2,
                pos: 0,
                kind: FileKind::PacketSocket {
                    ty: 2,
                    protocol: 0x88b5,
                    ifindex: 1,
                    ifname: "lo".into(),
                    options: PacketOptions {
                        auxdata: true,
                        ..Default::default()
                    },
                    memberships: vec![PacketMembership {
                        ifindex: 1,
                        ifname: "lo".into(),
                        ty: 0,
                        count: 1,
                        addr: vec![0x33, 0x33, 0, 0, 0, 1],
                    }],
                    fanout: None,
                    common: SocketCommon::default(),
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 40,
                flags: 2,
                pos: 0,
                kind: FileKind::ExternalTerminal {
                    path: "/dev/pts/3".into(),
                    rdev: 0x8803,
                    termios: TermiosImage {
                        cflag: 0xbf,
                        cc: vec![3; 19],
                        ..Default::default()
                    },
                    winsize: WinSizeImage {
                        rows: 24,
                        cols: 80,
                        ..Default::default()
                    },
                    foreground: true,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 41,
                flags: 2,
                pos: 0,
                kind: FileKind::ControllingTerminal {
                    path: "/dev/tty".into(),
                    of_pair: true,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 42,
                flags: 2,
                pos: 0,
                kind: FileKind::PtyMaster {
                    pty: PtyPair {
                        index: 5,
                        slave_termios: TermiosImage {
                            cc: vec![3; 19],
                            ..Default::default()
                        },
                        to_slave: b"typed".to_vec(),
                        ..Default::default()
                    },
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 43,
                flags: 2,
                pos: 0,
                kind: FileKind::PtySlave { index: 5 },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 17,
                flags: 0o2000000,
                pos: 0,
                kind: FileKind::Namespace {
                    ns: "net".into(),
                    ino: 4026531833,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 18,
                flags: 0o2200000,
                pos: 0,
                kind: FileKind::ProcFile {
                    path: "fd".into(),
                    directory: true,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 19,
                flags: 0o2000000,
                pos: 0,
                kind: FileKind::Fanotify {
                    flags: 0x10,
                    event_flags: 0,
                    marks: vec![crate::FanotifyMark {
                        on: 0,
                        path: "/tmp".into(),
                        sdev: 0x80_0013,
                        ino: 2,
                        flags: 0,
                        mask: 8,
                        ignored_mask: 0,
                    }],
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 20,
                flags: 0o2,
                pos: 0,
                kind: FileKind::UnixSocket {
                    ino: 77,
                    ty: 1,
                    name: Some(UnixSocketName::Abstract(b"sample".to_vec())),
                    listen: None,
                    pending: Vec::new(),
                    peer: 0,
                    peer_closed: true,
                    accepted_from: 0,
                    shutdown: 3,
                    passcred: false,
                    rcvbuf: 212992,
                    sndbuf: 212992,
                    peek_off: -1,
                    queue: vec![UnixMessage {
                        data: b"queued".to_vec(),
                        cred: Some(UnixCred {
                            pid: 42,
                            uid: 0,
                            gid: 0,
                        }),
                        files: vec![1],
                        from: 0,
                    }],
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 60,
                flags: 0o2,
                pos: 0,
                kind: FileKind::Inet(Box::new(InetSocket {
                    family: 2,
                    ty: 1,
                    protocol: 6,
                    state: 1,
                    local: Some(InetAddr {
                        ip: vec![127, 0, 0, 1],
                        port: 4000,
                        ..Default::default()
                    }),
                    peer: Some(InetAddr {
                        ip: vec![127, 0, 0, 1],
                        port: 4001,
                        ..Default::default()
                    }),
                    tcp: Some(TcpConnection {
                        snd_seq: 1000,
                        rcv_seq: 2000,
                        send_queue: b"unacked".to_vec(),
                        unsent: 2,
                        recv_queue: b"unread".to_vec(),
                        mss: 65483,
                        snd_wscale: 7,
                        rcv_wscale: 7,
                        sack: true,
                        timestamps: true,
                        hold_table: "stasis_hold_42_1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                owner: Default::default(),
                locks: Vec::new(),
            },
            FileDesc {
                id: 61,
                flags: 0o2002,
                pos: 7,
                kind: FileKind::LinkRemap {
                    path: "/tmp/unlinked".into(),
                    remap: "/tmp/.stasis-remap.2049.80".into(),
                    dev: 2049,
                    ino: 80,
                    size: 4096,
                },
                owner: Default::default(),
                locks: Vec::new(),
            },
        ],
        fds: vec![
            FdEntry {
                fd: 0,
                file_id: 0,
                cloexec: false,
            },
            FdEntry {
                fd: 3,
                file_id: 1,
                cloexec: true,
            },
            FdEntry {
                fd: 4,
                file_id: 2,
                cloexec: false,
            },
            FdEntry {
                fd: 5,
                file_id: 3,
                cloexec: false,
            },
            FdEntry {
                fd: 6,
                file_id: 4,
                cloexec: false,
            },
            FdEntry {
                fd: 7,
                file_id: 5,
                cloexec: true,
            },
            FdEntry {
                fd: 8,
                file_id: 6,
                cloexec: false,
            },
            FdEntry {
                fd: 9,
                file_id: 7,
                cloexec: true,
            },
            FdEntry {
                fd: 10,
                file_id: 8,
                cloexec: false,
            },
            FdEntry {
                fd: 11,
                file_id: 9,
                cloexec: false,
            },
            FdEntry {
                fd: 12,
                file_id: 10,
                cloexec: false,
            },
            FdEntry {
                fd: 13,
                file_id: 11,
                cloexec: false,
            },
            FdEntry {
                fd: 14,
                file_id: 12,
                cloexec: false,
            },
            FdEntry {
                fd: 15,
                file_id: 13,
                cloexec: true,
            },
            FdEntry {
                fd: 24,
                file_id: 14,
                cloexec: true,
            },
            FdEntry {
                fd: 25,
                file_id: 15,
                cloexec: true,
            },
            FdEntry {
                fd: 26,
                file_id: 16,
                cloexec: false,
            },
            FdEntry {
                fd: 27,
                file_id: 20,
                cloexec: false,
            },
        ],
        signals: ProcessSignals {
            actions: vec![SigAction {
                sig: 10,
                handler: 0x401000,
                flags: 0x4000000,
                restorer: 0x401100,
                mask: 0,
            }],
            shared_pending: vec![Siginfo {
                signo: 10,
                raw: vec![0; 128],
            }],
        },
        itimers: vec![ITimer {
            which: 0,
            interval_us: 0,
            value_us: 5,
        }],
        threads: vec![ThreadImage {
            tid: 42,
            comm: "demo".into(),
            regs: Regs {
                rip: 0x400100,
                rsp: 0x7ffc0000e000,
                ..Default::default()
            },
            xstate: vec![0; 832],
            sigmask: 0,
            pending: vec![],
            altstack: AltStack {
                sp: 0,
                flags: 2,
                size: 0,
            },
            rseq: Some(Rseq {
                addr: 0x7ffc0000d000,
                len: 32,
                signature: 0x53053053,
            }),
            robust_list: 0,
            robust_list_len: 24,
            clear_child_tid: 0,
            loginuid: 1000,
            sched: ThreadSched {
                policy: 1,
                reset_on_fork: true,
                nice: 5,
                priority: 10,
                runtime_ns: 0,
                deadline_ns: 0,
                period_ns: 0,
                affinity: vec![0b11],
            },
            prctl: ThreadPrctl {
                timerslack_ns: 50_000,
                tsc: 1,
                mce_kill: 2,
                io_flusher: false,
                spec_store_bypass: 2,
                spec_indirect_branch: 2,
                spec_l1d_flush: 8,
            },
        }],
        posix_timers: vec![PosixTimer {
            id: 2,
            clock: 1,
            notify: 0,
            signo: 12,
            sival: 0xabc,
            tid: 42,
            value_ns: 2_500_000_000,
            interval_ns: 1_000_000_000,
            overrun: 0,
        }],
        shares_fd_table_with: 0,
        shares_fs_with: 0,
        stop: Some(JobStop {
            signal: 20,
            report_pending: true,
        }),
        prctl: ProcessPrctl {
            thp_disable: 1,
            mdwe: 0,
            membarrier: 16,
            memory_merge: false,
        },
        mlock_future: 0,
        posix_locks: vec![PosixLock {
            fd: 3,
            range: LockRange {
                write: true,
                start: 0,
                end: Some(99),
            },
        }],
        seccomp: ProcessSeccomp {
            filters: vec![SeccompFilter {
                // ld [0]; ret ALLOW
                insns: vec![0x0000_0000_0000_0020, 0x7fff_0000_0000_0006],
                log: true,
            }],
            threads: vec![ThreadSeccomp {
                mode: 2,
                chain: vec![0],
            }],
        },
    }
}

/// Hostile process records for tests: `count` copies of the payload of the encoded
/// [`sample_process`], each with 1 to 4 bytes changed at random (xorshift from `seed`), framed
/// again with a correct CRC so that decoding really runs. `check` gets every one that decodes;
/// returns how many did.
pub fn mutated_process_records(
    seed: u64,
    count: usize,
    mut check: impl FnMut(ProcessImage),
) -> usize {
    let path = std::path::Path::new("x");
    let good = encode_record(RecordKind::Process, &sample_process(), path)
        .expect("the sample process encodes");
    let payload = &good[HEADER_LEN..];
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut decoded = 0;
    for _ in 0..count {
        let mut p = payload.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() % p.len() as u64) as usize;
            match next() % 3 {
                0 => p[i] = next() as u8,
                1 => p[i] ^= 1 << (next() % 8),
                _ => p[i] = 0xff,
            }
        }
        let header = Header {
            version: FORMAT_VERSION,
            kind: RecordKind::Process as u32,
            payload_len: p.len() as u64,
            payload_crc: crc32c::crc32c(&p),
        };
        let mut b = header.encode().to_vec();
        b.extend_from_slice(&p);
        if let Ok(img) = decode_record::<ProcessImage>(RecordKind::Process, &b, path) {
            decoded += 1;
            check(img);
        }
    }
    decoded
}
