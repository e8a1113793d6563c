/*
 * New-connection client for bench/lib/conn-rate.ts: CONCURRENCY loops, each connects, sends a Redis
 * PING, reads +PONG and ends the connection, then starts over, for SECONDS. A whole cycle is
 * counted, as in the Node generator it stands in for, and the output is the same JSON plus the CPU
 * the client spent per cycle. One thread and one epoll set drive every loop.
 *
 * CLOSE says who ends it. `client` (the default): the client half-closes after +PONG and waits for
 * the server's FIN, so the client and a proxy's connection to its backend each keep the closed
 * connection in TIME_WAIT. `server`: the client sends PING and QUIT together, the server closes
 * after +OK, and TIME_WAIT stays with the servers. Why it matters: connect() may reuse a local port
 * in TIME_WAIT only a second after it was last used (net.ipv4.tcp_tw_reuse_delay) and prefers half
 * of the ephemeral range, so one source address reaches one destination at ~14,000 new connections
 * per second on this machine, direct or through any proxy: `client` then measures that limit (and
 * the port search it costs inside connect()), `server` the proxies.
 *
 * A reconnect storm is CONCURRENCY clients and a SECONDS so short that each loop runs one cycle:
 * every client connects at once, as after a failover, and `maxMs` says when the last was served.
 *
 *   cc -O2 -o conn-cycle-client conn-cycle-client.c
 *   conn-cycle-client HOST PORT CONCURRENCY SECONDS [client|server]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char kPing[] = "PING\r\n";
static const char kPingQuit[] = "PING\r\nQUIT\r\n";
static const char* request = kPing;
static size_t request_bytes = sizeof kPing - 1;
static size_t reply_bytes = sizeof "+PONG\r\n" - 1;
static int server_closes = 0;

enum Phase { CONNECTING, AWAITING_REPLY, AWAITING_FIN };

struct Loop {
  int fd;
  enum Phase phase;
  size_t received;
  double started;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int compare_doubles(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static struct sockaddr_in server;
static int epfd;
static double* latencies;
static size_t latency_count, latency_capacity;
static long completed, errors;

static void record_latency(double ms) {
  if (latency_count == latency_capacity) {
    latency_capacity = latency_capacity ? latency_capacity * 2 : 65536;
    latencies = realloc(latencies, latency_capacity * sizeof *latencies);
    if (latencies == NULL) {
      perror("realloc");
      exit(1);
    }
  }
  latencies[latency_count++] = ms;
}

/* Starts a cycle on LOOP: a non-blocking connect, watched for writability (connected) and input. */
static int start_cycle(struct Loop* loop) {
  loop->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (loop->fd < 0) return -1;
  const int one = 1;
  /* TCP_NODELAY, as the Node generator (setNoDelay), redis-cli and libpq set it. */
  setsockopt(loop->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  loop->phase = CONNECTING;
  loop->received = 0;
  loop->started = now();
  if (connect(loop->fd, (const struct sockaddr*)&server, sizeof server) != 0 && errno != EINPROGRESS) return -1;
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = loop};
  return epoll_ctl(epfd, EPOLL_CTL_ADD, loop->fd, &ev);
}

static void end_cycle(struct Loop* loop, int ok) {
  /* close() drops the descriptor from the epoll set too. */
  close(loop->fd);
  loop->fd = -1;
  if (ok) {
    completed++;
    record_latency((now() - loop->started) * 1000);
  } else {
    errors++;
  }
}

/* Advances LOOP on an event; returns 1 when the cycle ended (ok or not), 0 while it goes on. */
static int advance(struct Loop* loop, unsigned events) {
  if (loop->phase == CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return 0;
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(loop->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0 ||
        send(loop->fd, request, request_bytes, MSG_NOSIGNAL) != (ssize_t)request_bytes) {
      end_cycle(loop, 0);
      return 1;
    }
    loop->phase = AWAITING_REPLY;
    /* Only input matters from here on. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = loop};
    epoll_ctl(epfd, EPOLL_CTL_MOD, loop->fd, &ev);
    return 0;
  }
  char buf[256];
  for (;;) {
    const ssize_t n = recv(loop->fd, buf, sizeof buf, 0);
    if (n > 0) {
      loop->received += (size_t)n;
      if (loop->phase == AWAITING_REPLY && loop->received >= reply_bytes) {
        if (!server_closes) shutdown(loop->fd, SHUT_WR);
        loop->phase = AWAITING_FIN;
      }
      continue;
    }
    if (n == 0) {
      end_cycle(loop, loop->phase == AWAITING_FIN);
      return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EINTR) continue;
    end_cycle(loop, 0);
    return 1;
  }
}

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: conn-cycle-client HOST PORT CONCURRENCY SECONDS [client|server]\n");
    return 2;
  }
  if (argc == 6 && strcmp(argv[5], "server") == 0) {
    server_closes = 1;
    request = kPingQuit;
    request_bytes = sizeof kPingQuit - 1;
    reply_bytes = sizeof "+PONG\r\n+OK\r\n" - 1;
  } else if (argc == 6 && strcmp(argv[5], "client") != 0) {
    fprintf(stderr, "conn-cycle-client: CLOSE must be client or server\n");
    return 2;
  }
  memset(&server, 0, sizeof server);
  server.sin_family = AF_INET;
  server.sin_port = htons(atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
    fprintf(stderr, "conn-cycle-client: HOST must be an IPv4 address\n");
    return 2;
  }
  const int concurrency = atoi(argv[3]);
  const double seconds = atof(argv[4]);
  if (concurrency < 1 || seconds <= 0) {
    fprintf(stderr, "conn-cycle-client: CONCURRENCY and SECONDS must be positive\n");
    return 2;
  }
  /* A storm holds a descriptor per client: the soft limit goes up to the hard one. */
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  struct Loop* loops = calloc((size_t)concurrency, sizeof *loops);
  struct epoll_event* events = calloc((size_t)concurrency, sizeof *events);
  if (epfd < 0 || loops == NULL || events == NULL) {
    perror("conn-cycle-client");
    return 1;
  }
  const double cpu_before = cpu_seconds();
  const double started = now();
  const double deadline = started + seconds;
  int active = 0;
  for (int i = 0; i < concurrency; i++) {
    if (start_cycle(&loops[i]) != 0) {
      perror("connect");
      return 1;
    }
    active++;
  }
  while (active > 0) {
    const int n = epoll_wait(epfd, events, concurrency, 1000);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      struct Loop* loop = events[i].data.ptr;
      if (loop->fd < 0 || !advance(loop, events[i].events)) continue;
      if (now() >= deadline) {
        active--;
      } else if (start_cycle(loop) != 0) {
        /* Out of ports or descriptors: counted, and this loop stops. */
        if (loop->fd >= 0) close(loop->fd);
        loop->fd = -1;
        errors++;
        active--;
      }
    }
  }
  const double elapsed = now() - started;
  const double cpu = cpu_seconds() - cpu_before;
  qsort(latencies, latency_count, sizeof *latencies, compare_doubles);
  const double p50 = latency_count ? latencies[latency_count / 2] : -1;
  const double p99 = latency_count ? latencies[(size_t)(latency_count * 0.99)] : -1;
  const double max = latency_count ? latencies[latency_count - 1] : -1;
  printf(
      "{\"connectionsPerSecond\":%.1f,\"completed\":%ld,\"errors\":%ld,\"p50Ms\":%.4f,\"p99Ms\":%.4f,"
      "\"maxMs\":%.4f,\"clientCpuUsPerCycle\":%.2f}\n",
      completed / elapsed, completed, errors, p50, p99, max, completed ? cpu * 1e6 / completed : -1.0);
  return 0;
}
