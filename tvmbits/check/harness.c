/*
 * tvmbits check harness: runs TVM-compiled kernel functions on a board's CPU (here: under
 * qemu-user) without the TVM runtime.
 *
 * A kernel library built by TVM exports each PrimFunc as `__tvm_ffi_<name>`, a tvm-ffi packed
 * function (TVMFFISafeCallType: TVMFFIAny arguments, here DLTensor pointers), imports
 * TVMFFIErrorSetRaisedFromCStrParts from libtvm_ffi, and holds three function-pointer variables
 * that TVM's library loader (in libtvm_runtime) fills in: __TVMBackendParallelLaunch,
 * __TVMBackendAllocWorkspace and __TVMBackendFreeWorkspace. This harness links libtvm_ffi (built
 * for the board from the tvm-ffi sources) and fills those pointers itself: workspaces come from
 * aligned malloc, and a parallel launch runs its tasks one after another on this thread, as
 * many tasks as a board has cores (argument 2, default 4), so each task's share of the work is
 * computed as it would be there.
 *
 * The program file (argument 1), made by tvmbits/check/runner.py, is one statement a line:
 *   lib PATH                                   load the kernel library
 *   tensor ID CODE BITS LANES NDIM D... FILE   a tensor (DLDataType code/bits/lanes); FILE is
 *                                              its raw bytes, or "-" for zeros
 *   call NAME NARGS ID...                      call __tvm_ffi_NAME on those tensors
 *   write ID FILE                              write a tensor's raw bytes
 * Exit status 0 when every call returned 0; otherwise one line on stderr naming the call and
 * tvm-ffi's error message.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

#define MAX_TENSORS 64
#define MAX_ARGS 16
#define ALIGN 64

/* as in TVM's include/tvm/runtime/c_backend_api.h */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

static int g_tasks = 4;

static int parallel_launch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  TVMParallelGroupEnv env = {NULL, num_task > 0 ? num_task : g_tasks};
  for (int task = 0; task < env.num_task; ++task) {
    int rc = flambda(task, &env, cdata);
    if (rc != 0) return rc;
  }
  return 0;
}

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type, (void)device_id, (void)code, (void)bits;
  void* ptr = NULL;
  if (posix_memalign(&ptr, ALIGN, nbytes ? (size_t)nbytes : 1) != 0) return NULL;
  return ptr;
}

static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type, (void)device_id;
  free(ptr);
  return 0;
}

static void die(const char* what, const char* detail) {
  fprintf(stderr, "harness: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(1);
}

static void set_backend_pointer(void* lib, const char* name, void* fn) {
  void** slot = (void**)dlsym(lib, name);
  if (slot) *slot = fn;  // absent when the library never uses it
}

static size_t nbytes(const DLTensor* t) {
  size_t n = ((size_t)t->dtype.bits * t->dtype.lanes + 7) / 8;
  for (int i = 0; i < t->ndim; ++i) n *= (size_t)t->shape[i];
  return n;
}

static void report_ffi_error(const char* name) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err == NULL) die("call failed without an error", name);
  const TVMFFIErrorCell* cell = (const TVMFFIErrorCell*)((char*)err + sizeof(TVMFFIObject));
  fprintf(stderr, "harness: %s: %.*s: %.*s\n", name, (int)cell->kind.size, cell->kind.data,
          (int)cell->message.size, cell->message.data);
  TVMFFIObjectDecRef(err);
  exit(1);
}

int main(int argc, char** argv) {
  if (argc < 2) die("usage: harness PROGRAM [TASKS]", NULL);
  if (argc > 2) g_tasks = atoi(argv[2]);
  FILE* prog = fopen(argv[1], "r");
  if (!prog) die("cannot open program", argv[1]);

  static DLTensor tensors[MAX_TENSORS];
  static int defined[MAX_TENSORS];
  void* lib = NULL;
  char word[4096];
  while (fscanf(prog, "%4095s", word) == 1) {
    if (strcmp(word, "lib") == 0) {
      char path[4096];
      if (fscanf(prog, "%4095s", path) != 1) die("bad lib line", NULL);
      lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
      if (!lib) die("dlopen failed", dlerror());
      set_backend_pointer(lib, "__TVMBackendParallelLaunch", (void*)parallel_launch);
      set_backend_pointer(lib, "__TVMBackendAllocWorkspace", (void*)alloc_workspace);
      set_backend_pointer(lib, "__TVMBackendFreeWorkspace", (void*)free_workspace);
    } else if (strcmp(word, "tensor") == 0) {
      int id, code, bits, lanes, ndim;
      if (fscanf(prog, "%d %d %d %d %d", &id, &code, &bits, &lanes, &ndim) != 5 || id < 0 ||
          id >= MAX_TENSORS || ndim < 0 || ndim > 8)
        die("bad tensor line", NULL);
      DLTensor* t = &tensors[id];
      memset(t, 0, sizeof(*t));
      t->device.device_type = kDLCPU;
      t->ndim = ndim;
      t->dtype.code = (uint8_t)code;
      t->dtype.bits = (uint8_t)bits;
      t->dtype.lanes = (uint16_t)lanes;
      t->shape = (int64_t*)calloc(ndim ? ndim : 1, sizeof(int64_t));
      for (int i = 0; i < ndim; ++i)
        if (fscanf(prog, "%lld", (long long*)&t->shape[i]) != 1) die("bad tensor shape", NULL);
      char path[4096];
      if (fscanf(prog, "%4095s", path) != 1) die("bad tensor file", NULL);
      size_t size = nbytes(t);
      t->data = alloc_workspace(kDLCPU, 0, size, code, bits);
      if (!t->data) die("out of memory", NULL);
      memset(t->data, 0, size);
      if (strcmp(path, "-") != 0) {
        FILE* f = fopen(path, "rb");
        if (!f || fread(t->data, 1, size, f) != size) die("cannot read tensor file", path);
        fclose(f);
      }
      defined[id] = 1;
    } else if (strcmp(word, "call") == 0) {
      char name[1024], symbol[1100];
      int nargs;
      if (!lib) die("call before lib", NULL);
      if (fscanf(prog, "%1023s %d", name, &nargs) != 2 || nargs < 0 || nargs > MAX_ARGS)
        die("bad call line", NULL);
      TVMFFIAny args[MAX_ARGS], result;
      memset(args, 0, sizeof(args));
      for (int i = 0; i < nargs; ++i) {
        int id;
        if (fscanf(prog, "%d", &id) != 1 || id < 0 || id >= MAX_TENSORS || !defined[id])
          die("bad call argument", name);
        args[i].type_index = kTVMFFIDLTensorPtr;
        args[i].v_ptr = &tensors[id];
      }
      snprintf(symbol, sizeof(symbol), "__tvm_ffi_%s", name);
      TVMFFISafeCallType fn = (TVMFFISafeCallType)dlsym(lib, symbol);
      if (!fn) die("no such function in the library", symbol);
      memset(&result, 0, sizeof(result));
      result.type_index = kTVMFFINone;
      if (fn(NULL, args, nargs, &result) != 0) report_ffi_error(name);
    } else if (strcmp(word, "write") == 0) {
      int id;
      char path[4096];
      if (fscanf(prog, "%d %4095s", &id, path) != 2 || id < 0 || id >= MAX_TENSORS || !defined[id])
        die("bad write line", NULL);
      FILE* f = fopen(path, "wb");
      if (!f || fwrite(tensors[id].data, 1, nbytes(&tensors[id]), f) != nbytes(&tensors[id]))
        die("cannot write", path);
      fclose(f);
    } else {
      die("unknown statement", word);
    }
  }
  fclose(prog);
  return 0;
}
