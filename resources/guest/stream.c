/* ember-stream: move bytes over TCP, vsock or Unix stream sockets, for Ember's
 * network and vsock tests and benchmarks. Static, no dependencies; the same
 * binary runs in the guest and on the host.
 *
 *   ember-stream [OPTS] connect ADDR    connect, then copy stdin -> socket
 *                                       and socket -> stdout until both end
 *   ember-stream [OPTS] listen ADDR     accept, then the same copy
 * ADDR: tcp:HOST:PORT (IPv4; HOST may be empty to listen on any address),
 *       vsock:CID:PORT (CID -1 = any), unix:PATH.
 * OPTS:
 *   -s BYTES  send BYTES of a fixed pattern instead of reading stdin
 *   -d        discard what is received instead of writing it to stdout
 *   -e        echo: send back whatever is received (no stdin/stdout)
 *   -f        listen: fork a child per connection and keep accepting
 *   -n N      listen: stop after N connections (with -f: after N accepted)
 *   -F PORT   connect: speak Firecracker's vsock host protocol first
 *             (write "CONNECT PORT\n", expect "OK <n>\n")
 *   -t SECS   give up (exit 124) after SECS seconds
 *   -v        print "bytes_out=.. bytes_in=.. secs=.. out_mibps=.. in_mibps=.."
 *             to stderr at the end
 * Exit status: 0 when the copy completed, 1 on errors, 2 on usage errors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
struct sockaddr_vm_ {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_zero[4];
};

#define BUF (256 * 1024)

static long long opt_send = -1;
static int opt_discard, opt_echo, opt_fork, opt_verbose;
static long opt_count = -1, opt_fc_port = -1;

static void die(const char *what)
{
    fprintf(stderr, "ember-stream: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: ember-stream [-s BYTES] [-d] [-e] [-f] [-n N] [-F PORT] "
                    "[-t SECS] [-v] connect|listen ADDR\n");
    exit(2);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "ember-stream: timed out\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(124);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Fills addr from ADDR; returns its length. */
static socklen_t parse_addr(const char *s, struct sockaddr_storage *ss, int listening)
{
    memset(ss, 0, sizeof *ss);
    if (!strncmp(s, "unix:", 5)) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        un->sun_family = AF_UNIX;
        if (strlen(s + 5) >= sizeof un->sun_path)
            usage();
        strcpy(un->sun_path, s + 5);
        return sizeof *un;
    }
    if (!strncmp(s, "vsock:", 6)) {
        struct sockaddr_vm_ *vm = (struct sockaddr_vm_ *)ss;
        char *end;
        long cid = strtol(s + 6, &end, 10);
        if (*end != ':')
            usage();
        vm->svm_family = AF_VSOCK;
        vm->svm_cid = (unsigned int)cid;
        vm->svm_port = (unsigned int)strtoul(end + 1, NULL, 10);
        return sizeof *vm;
    }
    if (!strncmp(s, "tcp:", 4)) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        const char *colon = strrchr(s + 4, ':');
        char host[64];
        size_t hl;
        if (!colon || (hl = (size_t)(colon - (s + 4))) >= sizeof host)
            usage();
        memcpy(host, s + 4, hl);
        host[hl] = 0;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)atoi(colon + 1));
        if (hl == 0 && listening)
            in->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (!inet_aton(host, &in->sin_addr))
            usage();
        return sizeof *in;
    }
    usage();
    return 0;
}

static ssize_t write_all(int fd, const char *p, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return (ssize_t)done;
}

/* Firecracker's handshake: "CONNECT <port>\n" out, "OK <n>\n" back, read
 * byte by byte so no stream data is consumed. */
static void fc_handshake(int s)
{
    char line[64];
    size_t n = 0;
    int len = snprintf(line, sizeof line, "CONNECT %ld\n", opt_fc_port);
    if (write_all(s, line, (size_t)len) < 0)
        die("CONNECT");
    while (n < sizeof line - 1) {
        ssize_t r = read(s, line + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "ember-stream: connection closed before OK\n");
            exit(1);
        }
        if (line[n++] == '\n')
            break;
    }
    line[n] = 0;
    if (strncmp(line, "OK ", 3)) {
        fprintf(stderr, "ember-stream: unexpected reply: %s\n", line);
        exit(1);
    }
    if (opt_verbose)
        fprintf(stderr, "ember-stream: %s", line);
}

/* The copy loop: input (stdin, the pattern, or what came in for -e) goes
 * out on the socket, the socket's bytes go to stdout (or nowhere). */
static int copy(int s)
{
    static char out[BUF], in[BUF];
    size_t out_len = 0, out_off = 0;
    long long sent = 0, received = 0, pattern_left = opt_send;
    int in_open = !opt_echo && opt_send < 0, sock_rd_open = 1, shut = 0;
    double start = now();

    /* A blocking send of a whole buffer could wait for a peer that is itself
     * waiting for us to read. */
    if (fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl");

    for (size_t i = 0; i < sizeof out && opt_send >= 0; i++)
        out[i] = (char)(i * 131 + (i >> 12));
    for (;;) {
        /* Refill the output buffer. */
        if (out_off == out_len) {
            out_off = out_len = 0;
            if (pattern_left > 0) {
                out_len = pattern_left < BUF ? (size_t)pattern_left : BUF;
                pattern_left -= (long long)out_len;
            }
        }
        int have_out = out_off < out_len;
        int more_to_come = have_out || in_open || pattern_left > 0 || (opt_echo && sock_rd_open);
        if (!more_to_come && !shut) {
            shutdown(s, SHUT_WR);
            shut = 1;
        }
        if (shut && !sock_rd_open)
            break;
        struct pollfd p[2] = {{.fd = s, .events = 0}, {.fd = 0, .events = POLLIN}};
        int np = 1;
        if (have_out)
            p[0].events |= POLLOUT;
        /* Echo reads only when there is room to send it back. */
        if (sock_rd_open && !(opt_echo && have_out))
            p[0].events |= POLLIN;
        if (in_open && !have_out)
            np = 2;
        if (poll(p, (nfds_t)np, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (np == 2 && (p[1].revents & (POLLIN | POLLHUP))) {
            ssize_t r = read(0, out, BUF);
            if (r < 0 && errno != EINTR)
                die("read stdin");
            if (r == 0)
                in_open = 0;
            if (r > 0) {
                out_off = 0;
                out_len = (size_t)r;
            }
        }
        if ((p[0].revents & POLLOUT) && have_out) {
            ssize_t w = write(s, out + out_off, out_len - out_off);
            if (w < 0 && errno != EINTR && errno != EAGAIN)
                die("send");
            if (w > 0) {
                out_off += (size_t)w;
                sent += w;
            }
        }
        if ((p[0].events & POLLIN) && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            char *dst = opt_echo ? out : in;
            ssize_t r = read(s, dst, BUF);
            if (r < 0 && errno != EINTR && errno != EAGAIN)
                die("receive");
            if (r == 0)
                sock_rd_open = 0;
            if (r > 0) {
                received += r;
                if (opt_echo) {
                    out_off = 0;
                    out_len = (size_t)r;
                } else if (!opt_discard && write_all(1, in, (size_t)r) < 0) {
                    die("write stdout");
                }
            }
        }
    }
    double secs = now() - start;
    if (opt_verbose)
        fprintf(stderr, "bytes_out=%lld bytes_in=%lld secs=%.3f out_mibps=%.1f in_mibps=%.1f\n",
                sent, received, secs, sent / secs / 1048576.0, received / secs / 1048576.0);
    return 0;
}

int main(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "s:defn:F:t:v")) != -1) {
        switch (c) {
        case 's': opt_send = atoll(optarg); break;
        case 'd': opt_discard = 1; break;
        case 'e': opt_echo = 1; break;
        case 'f': opt_fork = 1; break;
        case 'n': opt_count = atol(optarg); break;
        case 'F': opt_fc_port = atol(optarg); break;
        case 't': signal(SIGALRM, on_alarm); alarm((unsigned)atoi(optarg)); break;
        case 'v': opt_verbose = 1; break;
        default: usage();
        }
    }
    if (argc - optind != 2)
        usage();
    signal(SIGPIPE, SIG_IGN);
    int listening = !strcmp(argv[optind], "listen");
    if (!listening && strcmp(argv[optind], "connect"))
        usage();
    struct sockaddr_storage ss;
    socklen_t len = parse_addr(argv[optind + 1], &ss, listening);
    int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("socket");
    if (!listening) {
        if (ss.ss_family == AF_VSOCK) {
            /* Linux gives a vsock connect 2 s by default; a loaded (or nested) host can take
             * longer to answer. SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD takes a struct timeval. */
            struct timeval tv = {.tv_sec = 30};
            setsockopt(s, AF_VSOCK, 6, &tv, sizeof tv);
        }
        if (connect(s, (struct sockaddr *)&ss, len) < 0)
            die("connect");
        if (opt_fc_port >= 0)
            fc_handshake(s);
        return copy(s);
    }
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_UNIX)
        unlink(((struct sockaddr_un *)&ss)->sun_path);
    if (bind(s, (struct sockaddr *)&ss, len) < 0)
        die("bind");
    if (listen(s, 128) < 0)
        die("listen");
    if (opt_verbose)
        fprintf(stderr, "ember-stream: listening\n");
    int status = 0;
    for (long n = 0; opt_count < 0 || n < opt_count; n++) {
        int conn = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR)
                continue;
            die("accept");
        }
        if (!opt_fork) {
            status |= copy(conn);
            close(conn);
            continue;
        }
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(s);
            _exit(copy(conn));
        }
        close(conn);
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    if (opt_fork) {
        int st;
        while (wait(&st) > 0)
            status |= WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    return status;
}
