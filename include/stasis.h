/*
 * stasis.h - checkpoint the calling process with one call (libstasis).
 *
 * The privileged daemon stasisd freezes the caller, writes its images into a directory the
 * caller passes as an open descriptor, and lets it run on: stasis_dump_self() returns 0.
 * In a process later restored from those images, the same call returns a second time, with 1
 * (like fork() returning twice). The daemon's socket is /run/stasis/stasis.sock, or
 * $STASIS_SOCKET when set.
 *
 * Building and linking (from the stasis repository):
 *
 *   cargo build --release      # target/release/libstasis.so and target/release/libstasis.a
 *
 *   dynamic:  gcc -I include app.c -L target/release -lstasis -o app
 *             (at run time: LD_LIBRARY_PATH=target/release ./app, or install the library
 *             into a directory the loader searches, e.g. /usr/local/lib, and run ldconfig)
 *   static:   gcc -I include app.c -L target/release -l:libstasis.a \
 *                 -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o app
 *             (-l:libstasis.a picks the archive even next to libstasis.so; passing the path
 *             target/release/libstasis.a works too. The archive holds the Rust standard
 *             library, which needs the system libraries listed, as reported by
 *             `rustc --print native-static-libs`. That list is the portable form; with
 *             glibc >= 2.34, as on Debian 12, plain `gcc ... libstasis.a` links as well.
 *             Link at most one Rust static library into a program.)
 *
 *   installed (include/stasis.pc, prefix /usr/local; see crates/libstasis/README.md):
 *     dynamic:  gcc app.c $(pkg-config --cflags --libs stasis) -o app
 *     static:   gcc app.c $(pkg-config --cflags stasis) \
 *                 -L$(pkg-config --variable=libdir stasis) -l:libstasis.a \
 *                 $(pkg-config --variable=static_libs stasis) -o app
 *
 * Threads: every function may be called from any thread; nothing is global except the
 * per-thread last error message. Every call opens its own close-on-exec connection.
 */
#ifndef STASIS_H
#define STASIS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes: negative, errno-style. Functions may also return a plain negative errno value
 * (-EACCES, ...) for a system error; stasis_strerror() describes those too. */
#define STASIS_E_VERSION     (-1001) /* client and daemon versions differ */
#define STASIS_E_CONNECT     (-1002) /* cannot reach the daemon */
#define STASIS_E_PROTOCOL    (-1003) /* malformed or unexpected message */
#define STASIS_E_REFUSED     (-1004) /* not allowed by a security rule */
#define STASIS_E_UNSUPPORTED (-1005) /* the process uses something stasis cannot dump yet */
#define STASIS_E_DUMP        (-1006) /* the dump failed */
#define STASIS_E_DAEMON      (-1007) /* the daemon or its worker failed, or the connection was lost */
#define STASIS_E_INVALID     (-1008) /* bad argument, or the before_checkpoint hook refused */
#define STASIS_E_RESTORE     (-1009) /* the restore failed */
#define STASIS_E_IMAGE       (-1010) /* the images are corrupt, truncated or invalid */
#define STASIS_E_ENVIRONMENT (-1011) /* the environment changed since the dump (pid taken, file gone or replaced) */
#define STASIS_E_BUSY        (-1012) /* the daemon serves as many requests as it may, in all or for
                                        this user: try again later */

/* Options of stasis_dump_self(). A zeroed struct (or a NULL pointer) means the defaults. */
struct stasis_dump_opts {
	uint32_t flags; /* STASIS_DUMP_* */
	/* more fields may follow in later versions, enabled by new flags */
};

#define STASIS_DUMP_WITH_CHILDREN (1u << 0) /* dump the caller's child processes too */
#define STASIS_DUMP_KILL          (1u << 1) /* kill the caller after the dump: the call then
                                               returns only in restored processes */

/*
 * Checkpoints the calling process into the directory open at images_dir_fd (e.g.
 * open(path, O_RDONLY | O_DIRECTORY)); the descriptor must stay open during the call.
 * Returns 0 in the original after the dump, 1 in a process restored from the images, or a
 * negative code on failure (see stasis_last_error() for the details). opts may be NULL.
 */
int stasis_dump_self(int images_dir_fd, const struct stasis_dump_opts *opts);

/*
 * Callbacks run in the calling process itself, never while it is frozen: before_checkpoint
 * before the daemon is contacted (a non-zero return aborts with STASIS_E_INVALID and nothing
 * is sent), after_dump in the original once the dump is written, after_restore in a restored
 * process. Any pointer may be NULL; user is passed to each.
 */
struct stasis_hooks {
	int (*before_checkpoint)(void *user);
	void (*after_dump)(void *user);
	void (*after_restore)(void *user);
	void *user;
};

/* stasis_dump_self() with hooks (hooks may be NULL). */
int stasis_dump_self_hooks(int images_dir_fd, const struct stasis_dump_opts *opts,
			   const struct stasis_hooks *hooks);

/*
 * Restores the process whose images are in images_dir_fd, through the daemon and with the
 * caller's credentials. The restored pid is stored in *pid_out (if not NULL) once it runs.
 * With detach != 0, returns 0 as soon as it runs; otherwise waits for it and returns its
 * exit status (exit code, or 128 + the signal that killed it). Negative code on failure.
 */
int stasis_restore(int images_dir_fd, int detach, int *pid_out);

/*
 * stasis_restore(), attaching a job that ran on a terminal outside its tree (started from a
 * shell) to terminal_fd, an open terminal of the caller's (opened for reading), passed to the
 * daemon as a descriptor (never a path): the restored job gets a session of its own with that
 * terminal as its controlling terminal, its process group in the foreground, and the dumped
 * terminal settings. The terminal must not be the controlling terminal of another session
 * (the caller's own shell's, say): the kernel gives a terminal to one session at a time.
 * stasis_restore() refuses such images (STASIS_E_UNSUPPORTED); images without a terminal
 * outside the tree ignore terminal_fd.
 */
int stasis_restore_tty(int images_dir_fd, int terminal_fd, int detach, int *pid_out);

/* A static description of any code (STASIS_E_*, -errno, 0, 1); never NULL. */
const char *stasis_strerror(int code);

/*
 * The detailed message of this thread's last failure ("" if none). Valid until the next
 * failing call on the same thread.
 */
const char *stasis_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* STASIS_H */
