/*
 * boot-stamp: runs one VMM and timestamps its guest's boot with CLOCK_MONOTONIC.
 * Used by resources/bench/boot-inner.sh (see resources/bench/boot.sh).
 *
 *   boot-stamp [-o OUT] [-e ERR] [-p PATTERN] [-t SECS] -- PROGRAM ARGS...
 *
 * The child gets stdin from /dev/null, stdout on a pipe that we read (copied to OUT when
 * given, else discarded), stderr to ERR (default /dev/null). Prints one line on stdout:
 *
 *   start_ns=<ns> init_ns=<ns or -1> exit_ns=<ns> status=<exit status or 128+signal>
 *
 * All three are absolute CLOCK_MONOTONIC times, so that timestamps the VMM logs with the
 * same clock (Ember's boot timer) can be placed on the same axis:
 *   start_ns  taken in the forked child immediately before execv(PROGRAM): process start;
 *   init_ns   when a read from the pipe first completed PATTERN (the guest's console line;
 *             -1 if it never appeared);
 *   exit_ns   when wait4 returned: the VMM and all its threads are gone and the kernel has
 *             torn down its address space and file descriptors (the KVM VM included).
 * -t SECS kills the child (SIGKILL) after SECS seconds; its status is then 137.
 * Exit status: 0 (the program's own is in the line: 127 if it could not be executed), or
 * 125 on errors of boot-stamp itself.
 * Build: gcc -O2 -static -o boot-stamp boot-stamp.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t child = -1;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "boot-stamp: %s: %s\n", what, strerror(errno));
    exit(125);
}

static void on_alarm(int sig)
{
    (void)sig;
    if (child > 0)
        kill(child, SIGKILL);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *out = NULL, *err = "/dev/null", *pattern = NULL;
    unsigned timeout = 0;
    int opt;
    while ((opt = getopt(argc, argv, "+o:e:p:t:")) != -1) {
        switch (opt) {
        case 'o': out = optarg; break;
        case 'e': err = optarg; break;
        case 'p': pattern = optarg; break;
        case 't': timeout = (unsigned)strtoul(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: boot-stamp [-o OUT] [-e ERR] [-p PATTERN] [-t SECS] -- PROGRAM ARGS...\n");
            return 125;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "boot-stamp: no program given\n");
        return 125;
    }
    size_t plen = pattern ? strlen(pattern) : 0;
    if (plen > 255) {
        fprintf(stderr, "boot-stamp: PATTERN longer than 255 bytes\n");
        return 125;
    }
    int outfd = -1;
    if (out && (outfd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        die(out);
    int errfd = open(err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (errfd < 0)
        die(err);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nullfd < 0)
        die("/dev/null");
    int outpipe[2], stamppipe[2];
    if (pipe2(outpipe, O_CLOEXEC) != 0 || pipe2(stamppipe, O_CLOEXEC) != 0)
        die("pipe2");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: a blocked read returns EINTR */
    sigaction(SIGALRM, &sa, NULL);

    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        if (dup2(nullfd, 0) < 0 || dup2(outpipe[1], 1) < 0 || dup2(errfd, 2) < 0)
            _exit(126);
        /* The stamp pipe is close-on-exec: the parent reads our 8 bytes, then EOF. */
        long long t = now_ns();
        if (write(stamppipe[1], &t, sizeof t) != (ssize_t)sizeof t)
            _exit(126);
        execv(argv[optind], &argv[optind]);
        _exit(127);
    }
    child = pid;
    if (timeout > 0)
        alarm(timeout);
    close(outpipe[1]);
    close(stamppipe[1]);

    long long start = -1;
    for (;;) {
        ssize_t n = read(stamppipe[0], &start, sizeof start);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof start)
            start = -1;
        break;
    }
    close(stamppipe[0]);

    /* Read the child's stdout until EOF, watching for the pattern across read boundaries. */
    char buf[65536 + 256];
    size_t keep = 0;
    long long seen = -1;
    for (;;) {
        ssize_t n = read(outpipe[0], buf + keep, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        long long t = now_ns();
        if (outfd >= 0 && write_all(outfd, buf + keep, (size_t)n) != 0)
            die("write");
        if (plen == 0 || seen >= 0)
            continue;
        size_t len = keep + (size_t)n;
        if (memmem(buf, len, pattern, plen)) {
            seen = t;
            continue;
        }
        keep = len < plen - 1 ? len : plen - 1;
        memmove(buf, buf + len - keep, keep);
    }
    int status;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    long long end = now_ns();
    alarm(0);
    if (w < 0)
        die("waitpid");
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("start_ns=%lld init_ns=%lld exit_ns=%lld status=%d\n", start, seen, end, code);
    return 0;
}
