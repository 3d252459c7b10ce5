//! Kernel structures passed to system calls by pointer, as `#[repr(C)]` plain-data types with
//! the x86-64 kernel layout, and the [`Pod`] trait that gives them a safe byte view.
//!
//! The engine runs system calls inside a stopped target and passes their structure arguments
//! through memory of the target: a value is turned into its bytes ([`Pod::as_bytes`]), copied
//! into the target, and read back with [`Pod::from_bytes`]. Every structure here is declared
//! with `kernel_struct!`, which checks at compile time that it has no padding and only plain
//! fields, and pins its size to the kernel's.

use std::mem::{size_of, MaybeUninit};

/// Plain data: a value of the type is nothing but initialised bytes, and any bytes of the right
/// length are a valid value. Native byte order (the kernel's).
///
/// # Safety
///
/// Implement it only for types that are `#[repr(C)]` (or primitive integers, or arrays of
/// `Pod`), whose fields are all `Pod`, with no padding bytes anywhere (every byte of a value is
/// initialised), and with no pointers, references, `bool`s, enums or other types that have
/// invalid bit patterns. `kernel_struct!` (in this module) checks all of this at compile time.
pub unsafe trait Pod: Copy + std::fmt::Debug + 'static {
    /// The bytes of `self`, as the kernel sees them.
    fn as_bytes(&self) -> &[u8] {
        let len = size_of::<Self>();
        // SAFETY: `self` is a valid reference to `len` bytes, all initialised (no padding, by
        // the trait's contract); u8 has no alignment requirement; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), len) }
    }

    /// A value read from exactly `size_of::<Self>()` bytes; `None` for any other length.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        let mut v = MaybeUninit::<Self>::uninit();
        // SAFETY: the destination is `size_of::<Self>()` writable bytes we own, the source has
        // exactly that many bytes, and the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
        }
        // SAFETY: every byte was written above, and any bit pattern is a valid `Self` (the
        // trait's contract).
        Some(unsafe { v.assume_init() })
    }

    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: all-zero bytes are a valid `Self` (any bit pattern is, by the contract).
        unsafe { std::mem::zeroed() }
    }
}

macro_rules! primitive_pod {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive integer has no padding and every bit pattern is a valid value.
        unsafe impl Pod for $t {}
    )*};
}
primitive_pod!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array of Pod elements has no padding between them (the element size is a
// multiple of its alignment) and every bit pattern of every element is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Declares a `#[repr(C)]` kernel structure and implements [`Pod`] for it, after checking at
/// compile time that every field is `Pod`, that there is no padding (the size is the sum of
/// the field sizes: padding must be spelled out as a field), and that the size is the one
/// given (the kernel's).
macro_rules! kernel_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($size:expr) {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        const _: () = {
            const fn is_pod<T: $crate::kabi::Pod>() {}
            $( is_pod::<$ty>(); )*
            assert!(
                ::std::mem::size_of::<$name>() == 0 $( + ::std::mem::size_of::<$ty>() )*,
                "padding in a kernel structure"
            );
            assert!(::std::mem::size_of::<$name>() == $size, "not the kernel's size");
        };
        // SAFETY: `#[repr(C)]`, every field is Pod and there is no padding (all three checked
        // at compile time just above).
        unsafe impl $crate::kabi::Pod for $name {}
        impl Default for $name {
            fn default() -> Self {
                <$name as $crate::kabi::Pod>::zeroed()
            }
        }
    };
}

kernel_struct! {
    /// `struct kernel_sigaction` as rt_sigaction(2) takes it on x86-64 (not the C library's).
    pub struct KernelSigaction(32) {
        pub handler: u64,
        pub flags: u64,
        pub restorer: u64,
        pub mask: u64,
    }
}

kernel_struct! {
    /// `stack_t` (sigaltstack(2)).
    pub struct StackT(24) {
        pub sp: u64,
        pub flags: i32,
        pub pad: u32,
        pub size: u64,
    }
}

kernel_struct! {
    /// `struct timeval` (64-bit).
    pub struct Timeval(16) {
        pub sec: i64,
        pub usec: i64,
    }
}

kernel_struct! {
    /// `struct itimerval` (getitimer(2), setitimer(2)).
    pub struct Itimerval(32) {
        pub interval: Timeval,
        pub value: Timeval,
    }
}

kernel_struct! {
    /// `struct __kernel_timespec`.
    pub struct Timespec(16) {
        pub sec: i64,
        pub nsec: i64,
    }
}

kernel_struct! {
    /// `struct itimerspec` (timer_gettime(2), timer_settime(2)).
    pub struct Itimerspec(32) {
        pub interval: Timespec,
        pub value: Timespec,
    }
}

kernel_struct! {
    /// `struct rlimit64` (prlimit64(2)).
    pub struct Rlimit64(16) {
        pub cur: u64,
        pub max: u64,
    }
}

kernel_struct! {
    /// `struct prctl_mm_map` (prctl(PR_SET_MM, PR_SET_MM_MAP)).
    pub struct PrctlMmMap(104) {
        pub start_code: u64,
        pub end_code: u64,
        pub start_data: u64,
        pub end_data: u64,
        pub start_brk: u64,
        pub brk: u64,
        pub start_stack: u64,
        pub arg_start: u64,
        pub arg_end: u64,
        pub env_start: u64,
        pub env_end: u64,
        /// Address of the auxiliary vector (in the calling process).
        pub auxv: u64,
        /// Its size in bytes.
        pub auxv_size: u32,
        /// The new /proc/PID/exe, or -1 (as u32) to leave it.
        pub exe_fd: u32,
    }
}

kernel_struct! {
    /// `struct clone_args` (clone3(2)), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    pub struct CloneArgs(88) {
        pub flags: u64,
        pub pidfd: u64,
        pub child_tid: u64,
        pub parent_tid: u64,
        pub exit_signal: u64,
        pub stack: u64,
        pub stack_size: u64,
        pub tls: u64,
        /// Address of an array of `set_tid_size` pid_t.
        pub set_tid: u64,
        pub set_tid_size: u64,
        pub cgroup: u64,
    }
}

kernel_struct! {
    /// `struct __user_cap_header_struct` (capset(2)).
    pub struct CapUserHeader(8) {
        pub version: u32,
        pub pid: i32,
    }
}

kernel_struct! {
    /// `struct __user_cap_data_struct` (capset(2)); version 3 takes two, low then high bits.
    pub struct CapUserData(12) {
        pub effective: u32,
        pub permitted: u32,
        pub inheritable: u32,
    }
}

kernel_struct! {
    /// `struct sigevent` (timer_create(2)); `tid` is `sigev_notify_thread_id`, the first
    /// member of the union that fills the rest.
    pub struct Sigevent(64) {
        pub value: u64,
        pub signo: i32,
        pub notify: i32,
        pub tid: i32,
        pub pad: [i32; 11],
    }
}

kernel_struct! {
    /// `siginfo_t`, kept as the kernel's 128 bytes (rt_sigqueueinfo(2) takes it as dumped).
    pub struct Siginfo(128) {
        pub bytes: [u8; 128],
    }
}

kernel_struct! {
    /// `struct rseq` (the 32 bytes of the original ABI): the area a thread registers with
    /// rseq(2). It lives in the thread's own memory; only its address is passed.
    pub struct Rseq(32) {
        pub cpu_id_start: u32,
        pub cpu_id: u32,
        pub rseq_cs: u64,
        pub flags: u32,
        pub node_id: u32,
        pub mm_cid: u32,
        pub pad: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let a = KernelSigaction {
            handler: 0x1122_3344_5566_7788,
            flags: 0x0400_0004,
            restorer: 0xdead_beef,
            mask: 1 << 9,
        };
        assert_eq!(a.as_bytes().len(), 32);
        assert_eq!(&a.as_bytes()[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(KernelSigaction::from_bytes(a.as_bytes()), Some(a));

        let s = StackT {
            sp: 0x7000,
            flags: -2,
            pad: 0,
            size: 8192,
        };
        let b = s.as_bytes();
        assert_eq!(&b[8..12], &(-2i32).to_le_bytes());
        assert_eq!(&b[16..24], &8192u64.to_le_bytes());
        assert_eq!(StackT::from_bytes(b), Some(s));

        let m = PrctlMmMap {
            auxv_size: 0x20,
            exe_fd: u32::MAX,
            env_end: 7,
            ..Default::default()
        };
        let b = m.as_bytes();
        assert_eq!(&b[80..88], &7u64.to_le_bytes());
        assert_eq!(&b[96..100], &0x20u32.to_le_bytes());
        assert_eq!(&b[100..104], &u32::MAX.to_le_bytes());
        assert_eq!(PrctlMmMap::from_bytes(b), Some(m));

        let e = Sigevent {
            value: 0x1122,
            signo: 34,
            notify: 4,
            tid: 77,
            pad: [0; 11],
        };
        let b = e.as_bytes();
        assert_eq!(&b[12..16], &4i32.to_le_bytes());
        assert_eq!(&b[16..20], &77i32.to_le_bytes());

        let g = [1u32, 2, 3];
        assert_eq!(g.as_bytes(), &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(Itimerval::from_bytes(&[0; 31]), None);
        assert_eq!(Itimerval::from_bytes(&[0; 33]), None);
        assert_eq!(Itimerval::from_bytes(&[0; 32]), Some(Itimerval::default()));
        assert_eq!(u32::from_bytes(&[1, 0, 0]), None);
        assert_eq!(u32::from_bytes(&[1, 0, 0, 0]), Some(1));
        assert_eq!(Siginfo::zeroed().bytes, [0u8; 128]);
    }
}

kernel_struct! {
    /// `struct flock` (fcntl F_SETLK, F_GETLK and the F_OFD_* commands): `l_type` is F_RDLCK,
    /// F_WRLCK or F_UNLCK, `len` 0 means up to the end of the file.
    pub struct Flock(32) {
        pub l_type: i16,
        pub whence: i16,
        pub pad: u32,
        pub start: i64,
        pub len: i64,
        pub pid: i32,
        pub pad2: u32,
    }
}
