#include "cmpi.h"
#include <mpi.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static MPI_Datatype datatype(cmpi_type type) {
    switch (type) {
    case CMPI_FLOAT: return MPI_FLOAT;
    case CMPI_DOUBLE: return MPI_DOUBLE;
    case CMPI_INT64: return MPI_INT64_T;
    case CMPI_INT32: return MPI_INT32_T;
    case CMPI_UINT8: return MPI_UINT8_T;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op operation(cmpi_op op) {
    switch (op) {
    case CMPI_SUM: return MPI_SUM;
    case CMPI_MIN: return MPI_MIN;
    case CMPI_MAX: return MPI_MAX;
    }
    return MPI_OP_NULL;
}

static MPI_Comm node_comm = MPI_COMM_NULL;

int cmpi_init(void) {
    int done = 0;
    MPI_Initialized(&done);
    if (done) return MPI_SUCCESS;
    // libnbc's MPI_Iallreduce picks a binomial reduce-then-broadcast for
    // in-place sums and under 4 ranks: the halves go one after the other,
    // one direction at a time, and on a 20 Mbit/s link the overlapped
    // all-reduce took as long as the blocking one. Recursive doubling sends
    // both ways at once. Read at MPI_Init; a value the user set wins.
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "4", 0);
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return rc;
    // Errors come back as codes so Swift can report them, then abort the job.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node_comm);
}

int cmpi_finalize(void) {
    if (node_comm != MPI_COMM_NULL) MPI_Comm_free(&node_comm);
    return MPI_Finalize();
}

int cmpi_initialized(void) {
    int done = 0;
    MPI_Initialized(&done);
    return done;
}

int cmpi_rank(void) { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int cmpi_size(void) { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }
int cmpi_local_rank(void) { int r = 0; MPI_Comm_rank(node_comm, &r); return r; }
int cmpi_local_size(void) { int s = 1; MPI_Comm_size(node_comm, &s); return s; }

/// MPI counts are ints: larger buffers go in chunks.
static const size_t chunk = (size_t)INT_MAX / 8;

static size_t type_size(cmpi_type type) {
    int s = 0;
    MPI_Type_size(datatype(type), &s);
    return (size_t)s;
}

int cmpi_allreduce(void *buffer, size_t count, cmpi_type type, cmpi_op op) {
    char *p = buffer;
    size_t width = type_size(type);
    while (count > 0) {
        size_t n = count < chunk ? count : chunk;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, (int)n, datatype(type), operation(op), MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += n * width;
        count -= n;
    }
    return MPI_SUCCESS;
}

enum { MAX_REQUESTS = 256 };
static MPI_Request requests[MAX_REQUESTS];
static int request_used[MAX_REQUESTS];

int cmpi_iallreduce(void *buffer, size_t count, cmpi_type type, cmpi_op op, int *request) {
    if (count > chunk) return MPI_ERR_COUNT;
    for (int i = 0; i < MAX_REQUESTS; i++) {
        if (request_used[i]) continue;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buffer, (int)count, datatype(type), operation(op),
                                MPI_COMM_WORLD, &requests[i]);
        if (rc != MPI_SUCCESS) return rc;
        request_used[i] = 1;
        *request = i;
        return MPI_SUCCESS;
    }
    return MPI_ERR_REQUEST;
}

int cmpi_wait(int request) {
    if (request < 0 || request >= MAX_REQUESTS || !request_used[request]) return MPI_ERR_REQUEST;
    int rc = MPI_Wait(&requests[request], MPI_STATUS_IGNORE);
    request_used[request] = 0;
    return rc;
}

int cmpi_test(int request, int *done) {
    if (request < 0 || request >= MAX_REQUESTS || !request_used[request]) return MPI_ERR_REQUEST;
    int rc = MPI_Test(&requests[request], done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS || *done) request_used[request] = 0;
    return rc;
}

int cmpi_broadcast(void *buffer, size_t count, cmpi_type type, int root) {
    char *p = buffer;
    size_t width = type_size(type);
    while (count > 0) {
        size_t n = count < chunk ? count : chunk;
        int rc = MPI_Bcast(p, (int)n, datatype(type), root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += n * width;
        count -= n;
    }
    return MPI_SUCCESS;
}

int cmpi_allgather(const void *send, size_t count, void *recv, cmpi_type type) {
    if (count > chunk) return MPI_ERR_COUNT;
    return MPI_Allgather(send, (int)count, datatype(type), recv, (int)count, datatype(type), MPI_COMM_WORLD);
}

int cmpi_allgatherv(const void *send, size_t count, void *recv,
                    const int *counts, const int *displs, cmpi_type type) {
    if (count > chunk) return MPI_ERR_COUNT;
    return MPI_Allgatherv(send, (int)count, datatype(type), recv, counts, displs, datatype(type),
                          MPI_COMM_WORLD);
}

int cmpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

void cmpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

void cmpi_error_string(int code, char *buffer, int capacity) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (capacity <= 0) return;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
    if (length >= capacity) length = capacity - 1;
    memcpy(buffer, text, (size_t)length);
    buffer[length] = 0;
}
