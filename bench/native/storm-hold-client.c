/*
 * Reconnect-storm client for bench/first-storm.ts: CLIENTS connections started at once, each sends
 * a Redis PING as soon as it is connected and keeps its connection once +PONG arrived, as a
 * connection pool refilling after a restart does. Prints, as JSON, when the median and the last
 * client were served (ms from the first connect) and how many failed. One thread, one epoll set,
 * so the client's own descriptor table never waits on other threads (see bench/first-storm.ts).
 *
 *   cc -O2 -o storm-hold-client storm-hold-client.c
 *   storm-hold-client HOST PORT CLIENTS [TIMEOUT_SECONDS]
 */
#include <arpa/inet.h>
#include <errno.h>
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

enum State { CONNECTING = 1, AWAITING_REPLY, SERVED, FAILED };

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int compare_doubles(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s HOST PORT CLIENTS [TIMEOUT_SECONDS]\n", argv[0]);
    return 2;
  }
  const int clients = atoi(argv[3]);
  const double timeout_ms = (argc > 4 ? atof(argv[4]) : 30) * 1e3;
  if (clients < 1) {
    fprintf(stderr, "CLIENTS must be a positive integer\n");
    return 2;
  }
  struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
    fprintf(stderr, "HOST must be an IPv4 address\n");
    return 2;
  }
  /* Every client holds a descriptor until the end. */
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < (rlim_t)clients + 64) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  const int epfd = epoll_create1(EPOLL_CLOEXEC);
  int* fds = calloc((size_t)clients, sizeof *fds);
  unsigned char* state = calloc((size_t)clients, 1);
  double* served_ms = calloc((size_t)clients, sizeof *served_ms);
  if (epfd < 0 || !fds || !state || !served_ms) {
    perror("setup");
    return 1;
  }
  const double started = now_ms();
  int served = 0, failed = 0;
  for (int i = 0; i < clients; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fds[i] < 0) {
      perror("socket");
      return 1;
    }
    const int one = 1;
    setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fds[i], (const struct sockaddr*)&server, sizeof server) != 0 && errno != EINPROGRESS) {
      state[i] = FAILED;
      failed++;
      continue;
    }
    state[i] = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev);
  }
  struct epoll_event events[512];
  while (served + failed < clients) {
    const double left = timeout_ms - (now_ms() - started);
    if (left <= 0) break;
    const int n = epoll_wait(epfd, events, 512, (int)left + 1);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      return 1;
    }
    for (int k = 0; k < n; k++) {
      const int i = (int)events[k].data.u32;
      if (state[i] == CONNECTING) {
        int error = 0;
        socklen_t len = sizeof error;
        if ((events[k].events & (EPOLLERR | EPOLLHUP)) || getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &error, &len) != 0 ||
            error != 0 || send(fds[i], "PING\r\n", 6, MSG_NOSIGNAL) != 6) {
          state[i] = FAILED;
          failed++;
          epoll_ctl(epfd, EPOLL_CTL_DEL, fds[i], NULL);
          continue;
        }
        state[i] = AWAITING_REPLY;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
        epoll_ctl(epfd, EPOLL_CTL_MOD, fds[i], &ev);
      } else if (state[i] == AWAITING_REPLY) {
        char buf[64];
        const ssize_t got = recv(fds[i], buf, sizeof buf, 0);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        epoll_ctl(epfd, EPOLL_CTL_DEL, fds[i], NULL);
        if (got > 0 && buf[0] == '+') {
          state[i] = SERVED;
          served_ms[served++] = now_ms() - started;
        } else {
          state[i] = FAILED;
          failed++;
        }
      }
    }
  }
  const int unanswered = clients - served - failed;
  qsort(served_ms, (size_t)served, sizeof *served_ms, compare_doubles);
  printf("{\"clients\":%d,\"served\":%d,\"failed\":%d,\"unanswered\":%d,\"p50Ms\":%.2f,\"lastMs\":%.2f}\n", clients,
         served, failed, unanswered, served ? served_ms[served / 2] : -1.0, served ? served_ms[served - 1] : -1.0);
  return 0;
}
