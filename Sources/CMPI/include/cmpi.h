// A small C surface over Open MPI for Swift.
//
// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are C macros
// that expand to addresses of internal globals, which Swift cannot import.
// Every function here works on MPI_COMM_WORLD and names its datatype and
// reduction through small enums, so Swift never sees an MPI handle.
// All functions return an MPI error code (0 = MPI_SUCCESS) unless noted.
#ifndef CMPI_H
#define CMPI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CMPI_FLOAT = 0, CMPI_DOUBLE = 1, CMPI_INT64 = 2, CMPI_INT32 = 3, CMPI_UINT8 = 4 } cmpi_type;
typedef enum { CMPI_SUM = 0, CMPI_MIN = 1, CMPI_MAX = 2 } cmpi_op;

/// Initialises MPI (with MPI_THREAD_FUNNELED) unless already initialised.
int cmpi_init(void);
int cmpi_finalize(void);
/// 1 when MPI_Init has run, else 0.
int cmpi_initialized(void);
int cmpi_rank(void);
int cmpi_size(void);
/// Rank and size among the processes on this node (MPI_COMM_TYPE_SHARED).
int cmpi_local_rank(void);
int cmpi_local_size(void);

/// In-place all-reduce of `count` elements.
int cmpi_allreduce(void *buffer, size_t count, cmpi_type type, cmpi_op op);
/// Non-blocking in-place all-reduce; `request` identifies it for cmpi_wait.
int cmpi_iallreduce(void *buffer, size_t count, cmpi_type type, cmpi_op op, int *request);
/// Waits for a request from cmpi_iallreduce; the slot is then free again.
int cmpi_wait(int request);
/// Progresses MPI and sets `done` to 1 when the request has completed (its
/// slot is then free: do not wait for it). Open MPI has no progress thread by
/// default, so a non-blocking collective advances only inside calls like this.
int cmpi_test(int request, int *done);
int cmpi_broadcast(void *buffer, size_t count, cmpi_type type, int root);
/// Every rank contributes `count` elements; `recv` holds size*count.
int cmpi_allgather(const void *send, size_t count, void *recv, cmpi_type type);
/// Rank r contributes counts[r] elements, placed at displs[r] in `recv`.
int cmpi_allgatherv(const void *send, size_t count, void *recv,
                    const int *counts, const int *displs, cmpi_type type);
int cmpi_barrier(void);
/// Ends every process of the job with `code`. Does not return.
void cmpi_abort(int code);
/// Writes MPI's text for `code` into `buffer` (NUL-terminated).
void cmpi_error_string(int code, char *buffer, int capacity);

#ifdef __cplusplus
}
#endif
#endif
