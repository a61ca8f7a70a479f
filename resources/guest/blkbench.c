/*
 * blkbench: a tiny block-device benchmark for the Ember test guest
 * (/bin/blkbench in the initramfs; built by resources/guest/build.sh with
 * gcc -O2 -static).
 *
 *     blkbench DEVICE MODE SIZE_MIB
 *
 * MODE is seqread, seqwrite, randread or randwrite. The device is opened with
 * O_DIRECT (no O_SYNC). Sequential modes move SIZE_MIB MiB from offset 0 in
 * 1 MiB requests; random modes move the same number of bytes in 4 KiB
 * requests at 4 KiB-aligned offsets inside the first SIZE_MIB MiB, drawn by a
 * fixed-seed xorshift64 (the same sequence every run). Writes end with
 * fdatasync(), which is timed. On success prints exactly one line:
 *
 *     BLKBENCH mode=<mode> bytes=<n> secs=<s.sss> mibps=<x.x> iops=<n>
 *
 * Errors go to stderr and the exit status is 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define SEQ_BLOCK MIB
#define RAND_BLOCK 4096u
#define ALIGN 4096u

static const char *prog = "blkbench";

static void die(const char *fmt, const char *arg, int err)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    if (err)
        fprintf(stderr, ": %s", strerror(err));
    fputc('\n', stderr);
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: %s DEVICE seqread|seqwrite|randread|randwrite SIZE_MIB\n", prog);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime%s", "", errno);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t xorshift64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

/* One full request of len bytes at off; short transfers are continued. */
static void do_io(int fd, int write_mode, char *buf, size_t len, off_t off, const char *dev)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write_mode ? pwrite(fd, buf + done, len - done, off + (off_t)done)
                               : pread(fd, buf + done, len - done, off + (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(write_mode ? "write to %s failed" : "read from %s failed", dev, errno);
        }
        if (n == 0)
            die("unexpected end of %s", dev, 0);
        done += (size_t)n;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4)
        usage();
    const char *dev = argv[1], *mode = argv[2];

    int write_mode, random_mode;
    if (strcmp(mode, "seqread") == 0) {
        write_mode = 0, random_mode = 0;
    } else if (strcmp(mode, "seqwrite") == 0) {
        write_mode = 1, random_mode = 0;
    } else if (strcmp(mode, "randread") == 0) {
        write_mode = 0, random_mode = 1;
    } else if (strcmp(mode, "randwrite") == 0) {
        write_mode = 1, random_mode = 1;
    } else {
        fprintf(stderr, "%s: unknown mode '%s'\n", prog, mode);
        usage();
    }

    char *end;
    errno = 0;
    unsigned long long size_mib = strtoull(argv[3], &end, 10);
    if (errno || end == argv[3] || *end || size_mib == 0 || argv[3][0] == '-' ||
        size_mib > (unsigned long long)INT64_MAX / MIB)
        die("bad SIZE_MIB '%s' (a positive number of MiB)", argv[3], 0);
    uint64_t bytes = (uint64_t)size_mib * MIB;

    int fd = open(dev, (write_mode ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        die("cannot open %s with O_DIRECT", dev, errno);

    /* The whole range must exist: block devices do not grow. */
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("cannot stat %s", dev, errno);
    if (S_ISBLK(st.st_mode) || !write_mode) {
        off_t dev_size = lseek(fd, 0, SEEK_END);
        if (dev_size < 0)
            die("cannot find the size of %s", dev, errno);
        if ((uint64_t)dev_size < bytes) {
            fprintf(stderr, "%s: %s has %lld bytes, fewer than %llu MiB\n", prog, dev,
                    (long long)dev_size, size_mib);
            return 1;
        }
    }

    size_t block = random_mode ? RAND_BLOCK : SEQ_BLOCK;
    char *buf;
    int err = posix_memalign((void **)&buf, ALIGN, block);
    if (err)
        die("cannot allocate a %s buffer", random_mode ? "4 KiB" : "1 MiB", err);
    /* Not all zeroes, so a write is never a candidate for zero detection. */
    for (size_t i = 0; i < block; i++)
        buf[i] = (char)(i * 131u + 7u);

    uint64_t ops = bytes / block;
    uint64_t blocks_in_range = bytes / RAND_BLOCK;
    uint64_t rng = 0x9e3779b97f4a7c15ull;

    double start = now();
    for (uint64_t i = 0; i < ops; i++) {
        off_t off;
        if (random_mode)
            off = (off_t)((xorshift64(&rng) % blocks_in_range) * RAND_BLOCK);
        else
            off = (off_t)(i * block);
        do_io(fd, write_mode, buf, block, off, dev);
    }
    if (write_mode && fdatasync(fd) != 0)
        die("fdatasync of %s failed", dev, errno);
    double secs = now() - start;
    if (close(fd) != 0)
        die("close of %s failed", dev, errno);

    double div = secs > 1e-9 ? secs : 1e-9;
    printf("BLKBENCH mode=%s bytes=%" PRIu64 " secs=%.3f mibps=%.1f iops=%.0f\n", mode, bytes, secs,
           (double)bytes / MIB / div, (double)ops / div);
    if (fflush(stdout) != 0 || ferror(stdout))
        die("cannot write the result%s", "", errno);
    return 0;
}
