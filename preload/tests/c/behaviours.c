/* One process behaviour of a managed file per mode, for
 * preload/tests/behaviours.rs:
 *
 *   behaviours exit FILE        store through a view, exit() without munmap
 *   behaviours _exit FILE       the same, ending with _exit()
 *   behaviours closed FILE      close the descriptor, then store, then munmap
 *   behaviours refused FILE     copy_file_range, sendfile, mremap on it: ENOTSUP
 *   behaviours fork FILE        a forked child touches the view
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
#include <sys/wait.h>
#include <unistd.h>

static char *map_file(const char *path, int *fd_out) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
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
    char *p = map_file(argv[2], &fd);
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
        expect_enotsup((long)mremap(p, 8192, 16384, MREMAP_MAYMOVE) == (long)MAP_FAILED ? -1 : 0, "mremap");
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
    }
    return 2;
}
