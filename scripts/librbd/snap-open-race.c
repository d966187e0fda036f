/*
 * Why the RBD store never opens an image directly at a snapshot.
 *
 * Loop: open image "race" of pool $POOL read-only, at snapshot "snap",
 * stat it, close it. With argv[1] = "open-at-snap" the snapshot is named in
 * rbd_open_read_only(); with "snap-set" the head is opened and then set to
 * the snapshot with rbd_snap_set() (what src/store/rbd/ffi.rs does).
 * Under valgrind, librbd 16.2.15 (Debian bookworm) reports a mutex locked
 * inside a freed 120-byte block on a librados thread in the first mode and
 * nothing in the second: see scripts/librbd/check.sh.
 */
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[1], "open-at-snap") && strcmp(argv[1], "snap-set"))) {
    fprintf(stderr, "usage: %s open-at-snap|snap-set ITERATIONS (env CEPH_CONF, POOL)\n", argv[0]);
    return 2;
  }
  int at_snap = strcmp(argv[1], "open-at-snap") == 0;
  int iterations = atoi(argv[2]);
  const char *pool = getenv("POOL") ? getenv("POOL") : "rbd";
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t img;
  if (rados_create2(&cluster, "ceph", "client.admin", 0) < 0 ||
      rados_conf_read_file(cluster, getenv("CEPH_CONF")) < 0 ||
      rados_connect(cluster) < 0 || rados_ioctx_create(cluster, pool, &io) < 0) {
    fprintf(stderr, "cannot connect to the cluster or open pool %s\n", pool);
    return 1;
  }
  if (rbd_open(io, "race", &img, NULL) < 0) {
    int order = 22;
    if (rbd_create(io, "race", 64 << 20, &order) < 0 || rbd_open(io, "race", &img, NULL) < 0 ||
        rbd_snap_create(img, "snap") < 0) {
      fprintf(stderr, "cannot create image race@snap\n");
      return 1;
    }
  }
  rbd_close(img);
  for (int i = 0; i < iterations; i++) {
    int r = rbd_open_read_only(io, "race", &img, at_snap ? "snap" : NULL);
    if (r == 0 && !at_snap)
      r = rbd_snap_set(img, "snap");
    if (r < 0) {
      fprintf(stderr, "open: %s\n", strerror(-r));
      return 1;
    }
    rbd_image_info_t info;
    rbd_stat(img, &info, sizeof info);
    rbd_close(img);
  }
  rados_ioctx_destroy(io);
  rados_shutdown(cluster);
  return 0;
}
