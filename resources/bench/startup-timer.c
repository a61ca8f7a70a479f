/*
 * startup-timer: runs one command and reports how long it took, with CLOCK_MONOTONIC.
 * Used by resources/bench/startup.sh.
 *
 *   startup-timer [-o OUT] [-e ERR] [-p PATTERN] -- PROGRAM ARGS...
 *
 * The child gets stdin from /dev/null, stdout on a pipe that we read (and copy to OUT when
 * given), stderr to ERR (default /dev/null). Prints one line:
 *
 *   t0=<ns> wall=<ns> pattern=<ns or -1> status=<exit status or 128+signal> utime=<us> stime=<us> maxrss=<KiB>
 *
 * t0 is the CLOCK_MONOTONIC time just before fork (absolute, so that timestamps the child
 * logs with the same clock can be placed on the same axis); wall is from t0 until wait4
 * returns (the child and all its threads are gone and the kernel has torn down its address
 * space and file descriptors, including the KVM VM); pattern is from t0 until PATTERN was
 * first seen on the child's stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(125);
}

int main(int argc, char **argv)
{
    const char *out = NULL, *err = "/dev/null", *pattern = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+o:e:p:")) != -1) {
        switch (opt) {
        case 'o': out = optarg; break;
        case 'e': err = optarg; break;
        case 'p': pattern = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-o OUT] [-e ERR] [-p PATTERN] -- PROGRAM ARGS...\n", argv[0]);
            return 125;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "startup-timer: no program given\n");
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
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        die("pipe2");

    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        if (dup2(nullfd, 0) < 0 || dup2(pipefd[1], 1) < 0 || dup2(errfd, 2) < 0)
            _exit(126);
        execvp(argv[optind], &argv[optind]);
        _exit(127);
    }
    close(pipefd[1]);

    /* Read the child's stdout until EOF, watching for the pattern across read boundaries. */
    size_t plen = pattern ? strlen(pattern) : 0;
    char window[4096 + 256];
    size_t keep = 0;
    long long seen = -1;
    for (;;) {
        ssize_t n = read(pipefd[0], window + keep, 4096);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        long long t = now_ns();
        if (outfd >= 0 && write(outfd, window + keep, (size_t)n) != n)
            die("write");
        size_t len = keep + (size_t)n;
        if (pattern && seen < 0 && plen > 0 && memmem(window, len, pattern, plen))
            seen = t - t0;
        keep = 0;
        if (plen > 1 && plen - 1 < 256) {
            keep = len < plen - 1 ? len : plen - 1;
            memmove(window, window + len - keep, keep);
        }
    }
    int status;
    struct rusage ru;
    pid_t w;
    while ((w = wait4(pid, &status, 0, &ru)) < 0 && errno == EINTR)
        ;
    long long t1 = now_ns();
    if (w < 0)
        die("wait4");
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("t0=%lld wall=%lld pattern=%lld status=%d utime=%ld stime=%ld maxrss=%ld\n", t0, t1 - t0,
           seen, code, ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec,
           ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec, ru.ru_maxrss);
    return 0;
}
