/* One process behaviour of a managed file per mode, for
 * preload/tests/behaviours.rs:
 *
 *   behaviours exit FILE        store through a view, exit() without munmap
 *   behaviours _exit FILE       the same, ending with _exit()
 *   behaviours closed FILE      close the descriptor, then store, then munmap
 *   behaviours refused FILE     copy_file_range, sendfile, mremap of part: ENOTSUP
 *   behaviours fork FILE        a forked child touches the view
 *   behaviours twice FILE       two views of the same range; one unmapped
 *   behaviours grow FILE        mremap grows a view in place
 *   behaviours dsync FILE       pwrite on an O_DSYNC descriptor, then SIGKILL
 *   behaviours syscall FILE     read(2) from a pipe into a view, write(2) from it
 *
 * Each writes "mkwrite" at byte 5000 of a 8192-byte file. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static char *map_file(const char *path, int *fd_out, int flags) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | flags, 0644);
    if (fd < 0 || ftruncate(fd, 8192) != 0) {
        perror("open/ftruncate");
        exit(1);
    }
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    *fd_out = fd;
    return p;
}

static void expect_enotsup(long rc, const char *what) {
    if (rc != -1 || errno != ENOTSUP) {
        fprintf(stderr, "%s: rc %ld errno %d, expected ENOTSUP\n", what, rc, errno);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *mode = argv[1];
    int fd;
    char *p = map_file(argv[2], &fd, strcmp(mode, "dsync") == 0 ? O_DSYNC : 0);
    if (strcmp(mode, "exit") == 0) {
        memcpy(p + 5000, "mkwrite", 7);
        exit(0);
    } else if (strcmp(mode, "_exit") == 0) {
        memcpy(p + 5000, "mkwrite", 7);
        _exit(0);
    } else if (strcmp(mode, "closed") == 0) {
        close(fd); /* the view stays, as POSIX says */
        memcpy(p + 5000, "mkwrite", 7);
        return munmap(p, 8192) == 0 ? 0 : 1;
    } else if (strcmp(mode, "refused") == 0) {
        memcpy(p + 5000, "mkwrite", 7);
        int other = open("/dev/null", O_WRONLY);
        expect_enotsup(copy_file_range(fd, NULL, other, NULL, 10, 0), "copy_file_range");
        expect_enotsup(sendfile(other, fd, NULL, 10), "sendfile");
        /* part of a view, moved: not supported (a whole view grows in place) */
        void *moved = mremap(p + 4096, 4096, 8192, MREMAP_MAYMOVE);
        expect_enotsup(moved == MAP_FAILED ? -1 : 0, "mremap");
        return munmap(p, 8192) == 0 ? 0 : 1;
    } else if (strcmp(mode, "fork") == 0) {
        memcpy(p + 5000, "mkwrite", 7);
        pid_t child = fork();
        if (child == 0) {
            volatile char c = p[5000]; /* not inherited: SIGSEGV */
            (void)c;
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        printf("child %s %d\n", WIFSIGNALED(status) ? "signal" : "exit",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return munmap(p, 8192) == 0 ? 0 : 1;
    } else if (strcmp(mode, "twice") == 0) {
        char *q = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (q == MAP_FAILED || munmap(p, 8192) != 0)
            return 1;
        memcpy(q + 5000, "mkwrite", 7); /* the other view is still mapped */
        return munmap(q, 8192) == 0 ? 0 : 1;
    } else if (strcmp(mode, "grow") == 0) {
        if (ftruncate(fd, 8192 * 2) != 0)
            return 1;
        char *q = mremap(p, 8192, 16384, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) {
            perror("mremap");
            return 1;
        }
        memcpy(q + 5000, "mkwrite", 7);
        memcpy(q + 12000, "grown", 5);
        if (munmap(q, 16384) != 0 || ftruncate(fd, 8192) != 0)
            return 1; /* back to 8192 bytes: the test checks the first part */
        return 0;
    } else if (strcmp(mode, "syscall") == 0) {
        /* The kernel stores into and loads from pages nothing touched yet. */
        int pipe_fds[2];
        char back[8];
        if (pipe(pipe_fds) != 0 || write(pipe_fds[1], "mkwrite", 7) != 7)
            return 1;
        if (read(pipe_fds[0], p + 5000, 7) != 7) {
            perror("read into the view");
            return 1;
        }
        if (write(pipe_fds[1], p + 5000, 7) != 7 || read(pipe_fds[0], back, 7) != 7 ||
            memcmp(back, "mkwrite", 7) != 0) {
            perror("write from the view");
            return 1;
        }
        return munmap(p, 8192) == 0 ? 0 : 1;
    } else if (strcmp(mode, "dsync") == 0) {
        if (pwrite(fd, "mkwrite", 7, 5000) != 7)
            return 1;
        kill(getpid(), SIGKILL); /* no munmap, no exit: only O_DSYNC wrote it */
    }
    return 2;
}
