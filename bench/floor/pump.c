/*
 * bench/floor/pump.c: the cheapest thing that can stand where a header-injecting proxy stands.
 *
 * NOT a proxy. A measuring instrument for bench/run.sh's `floor` step: it answers "what does the
 * kernel alone cost per request on this machine, with the same 4 syscalls per request as nginx and
 * issettled-proxy?" Whatever a real proxy spends above this pump's CPU per request is its own code.
 *
 * One thread, level-triggered epoll. Each accepted client gets its own upstream connection (1:1, no
 * pool). Bytes from the upstream are written to the client as they are. Bytes from the client are
 * written to the upstream with "Authorization: Bearer <token>\r\n" inserted after the first line of
 * each read. That is only right because wrk sends one whole request per write and waits for the
 * answer (no pipelining, no split heads): true for the harness's workloads, false for real traffic.
 * There is no HTTP parsing, no header filtering, no error handling beyond closing both sides.
 *
 *   pump LISTEN_PORT UPSTREAM_URL TOKEN_FILE      (UPSTREAM_URL: http://127.0.0.1:PORT[/...])
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CAP (64 * 1024)

struct side {
    int fd;
    int from_client;      /* bytes read here go upstream, with the header inserted */
    struct side *peer;
    char *pend;           /* bytes read here that the peer has not taken yet */
    size_t pend_off, pend_len;
    char buf[CAP];
};

static int ep;
static char auth[4096];
static size_t auth_len;

static void die(const char *what) { perror(what); exit(1); }

static void set_events(struct side *s, unsigned ev) {
    struct epoll_event e = {.events = ev, .data.ptr = s};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e) < 0) die("epoll_ctl mod");
}

/* Freed after the current epoll batch, which may still name either side. */
static struct side *graveyard[1024];
static int buried;

static void close_pair(struct side *s) {
    struct side *p = s->peer;
    close(s->fd);
    close(p->fd);
    s->fd = p->fd = -1;
    graveyard[buried++] = s;
    graveyard[buried++] = p;
}

static void bury(void) {
    for (int i = 0; i < buried; i++) {
        free(graveyard[i]->pend);
        free(graveyard[i]);
    }
    buried = 0;
}

/* Keep what the peer did not take, stop reading here, wait until the peer can take more. */
static void keep(struct side *s, const struct iovec *iov, int cnt, size_t skip) {
    size_t total = 0;
    for (int i = 0; i < cnt; i++) total += iov[i].iov_len;
    s->pend = malloc(total - skip);
    if (!s->pend) die("malloc");
    size_t at = 0;
    for (int i = 0; i < cnt; i++) {
        size_t l = iov[i].iov_len;
        if (skip >= l) { skip -= l; continue; }
        memcpy(s->pend + at, (char *)iov[i].iov_base + skip, l - skip);
        at += l - skip;
        skip = 0;
    }
    s->pend_off = 0;
    s->pend_len = at;
    set_events(s, 0);
    set_events(s->peer, EPOLLIN | EPOLLOUT);
}

/* Returns 0 when the pair was closed. */
static int readable(struct side *s) {
    ssize_t n = read(s->fd, s->buf, CAP);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    if (n <= 0) { close_pair(s); return 0; }
    struct iovec iov[3];
    int cnt = 1;
    iov[0].iov_base = s->buf;
    iov[0].iov_len = (size_t)n;
    if (s->from_client) {
        char *eol = memchr(s->buf, '\n', (size_t)n);
        if (eol) {
            size_t first = (size_t)(eol - s->buf) + 1;
            iov[0].iov_len = first;
            iov[1].iov_base = auth;
            iov[1].iov_len = auth_len;
            iov[2].iov_base = s->buf + first;
            iov[2].iov_len = (size_t)n - first;
            cnt = 3;
        }
    }
    size_t total = 0;
    for (int i = 0; i < cnt; i++) total += iov[i].iov_len;
    ssize_t w = writev(s->peer->fd, iov, cnt);
    if (w < 0 && errno != EAGAIN) { close_pair(s); return 0; }
    if (w < 0) w = 0;
    if ((size_t)w < total) keep(s, iov, cnt, (size_t)w);
    return 1;
}

/* The peer of `s` (whose bytes are pending) became writable. */
static int writable(struct side *dst) {
    struct side *s = dst->peer;
    if (!s->pend) { set_events(dst, EPOLLIN); return 1; }
    ssize_t w = write(dst->fd, s->pend + s->pend_off, s->pend_len - s->pend_off);
    if (w < 0 && errno != EAGAIN) { close_pair(s); return 0; }
    if (w > 0) s->pend_off += (size_t)w;
    if (s->pend_off == s->pend_len) {
        free(s->pend);
        s->pend = NULL;
        set_events(s, EPOLLIN);
        set_events(dst, EPOLLIN);
    }
    return 1;
}

static struct side *side_new(int fd, int from_client) {
    struct side *s = calloc(1, sizeof *s);
    if (!s) die("calloc");
    s->fd = fd;
    s->from_client = from_client;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: pump LISTEN_PORT UPSTREAM_URL TOKEN_FILE\n"); return 2; }
    int up_port;
    if (sscanf(argv[2], "http://127.0.0.1:%d", &up_port) != 1) { fprintf(stderr, "pump: upstream must be http://127.0.0.1:PORT\n"); return 2; }
    FILE *tf = fopen(argv[3], "r");
    if (!tf) die("token file");
    char token[3900];
    if (!fgets(token, sizeof token, tf)) die("token read");
    fclose(tf);
    token[strcspn(token, "\r\n")] = 0;
    auth_len = (size_t)snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);

    struct sockaddr_in up = {.sin_family = AF_INET, .sin_port = htons((unsigned short)up_port)};
    inet_pton(AF_INET, "127.0.0.1", &up.sin_addr);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &at.sin_addr);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&at, sizeof at) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    ep = epoll_create1(0);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (!s) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (cfd < 0) continue;
                int ufd = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(ufd, (struct sockaddr *)&up, sizeof up) < 0) { close(cfd); close(ufd); continue; }
                int fl = 1;
                if (ioctl(ufd, FIONBIO, &fl) < 0) die("FIONBIO");
                struct side *c = side_new(cfd, 1), *u = side_new(ufd, 0);
                c->peer = u;
                u->peer = c;
                struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                struct epoll_event ue = {.events = EPOLLIN, .data.ptr = u};
                epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &ue);
                continue;
            }
            if (s->fd < 0) continue;
            unsigned e = evs[i].events;
            if ((e & EPOLLOUT) && !writable(s)) continue;
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !s->pend && !readable(s)) continue;
        }
        bury();
    }
}
