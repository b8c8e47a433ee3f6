/*
 * read-only-models: a kiln:filter plugin in plain C, with no SDK and no
 * bindings generator, to show the interface is language-neutral. It
 * implements the canonical ABI of the `filter` world
 * (plugins/wit/filter.wit) by hand; kiln-proxy attaches the world when it
 * loads a core module that carries none.
 *
 * Policy: refuse requests that change the model store (pull, push, create,
 * copy, delete, blob uploads). On Cloud Run the models are baked into the
 * image; a client must not be able to fill the disk or delete them.
 * Configure it with routes = ["other"] (these are not inference routes).
 *
 * Build (scripts/build-plugins does this when clang is installed):
 *   clang --target=wasm32-unknown-unknown -O2 -mbulk-memory -nostdlib -Wl,--no-entry \
 *         -o read_only_models.wasm read_only_models.c
 */
#include <stddef.h>
#include <stdint.h>

/* ---- memory: a bump allocator the host uses to pass strings and lists ---- */

extern unsigned char __heap_base;
static uintptr_t heap_top;

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    if (heap_top == 0)
        heap_top = (uintptr_t)&__heap_base;
    uintptr_t p = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = p + new_size;
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * 65536;
    if (end > have) {
        size_t pages = (end - have + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1)
            __builtin_trap(); /* over the host's memory cap: fail the call */
    }
    heap_top = end;
    /* The host only allocates fresh blocks, but honour the contract. */
    for (size_t i = 0; old && i < old_size && i < new_size; i++)
        ((unsigned char *)p)[i] = ((const unsigned char *)old)[i];
    return (void *)p;
}

/* ---- the shapes of filter.wit, as the canonical ABI lays them out on wasm32 ---- */

struct header_list { const void *ptr; size_t len; };

/* variant decision { allow, modify(modification), reject(rejection) } */
struct decision {
    uint8_t tag; /* 0 allow, 1 modify, 2 reject */
    struct {     /* rejection: the payload starts at offset 4 */
        uint16_t status;
        const char *message;
        size_t message_len;
        struct header_list headers;
    } reject;
};

/* result<_, string> */
struct check { uint8_t is_err; const char *message; size_t message_len; };

static struct decision decision;
static struct check check;
static char message[256];

static int starts_with(const char *s, size_t len, const char *prefix) {
    size_t i = 0;
    for (; prefix[i]; i++)
        if (i >= len || s[i] != prefix[i])
            return 0;
    return 1;
}

static int equals(const char *s, size_t len, const char *word) {
    return starts_with(s, len, word) && word[len] == '\0';
}

/* The routes that change what models exist on this instance. */
static const char *const management[] = {
    "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/", 0,
};

__attribute__((export_name("validate-config")))
struct check *validate_config(void) {
    check.is_err = 0; /* no config to check */
    return &check;
}

__attribute__((export_name("on-request")))
struct decision *on_request(int32_t route,
                            const char *method, size_t method_len,
                            const char *path, size_t path_len,
                            const void *headers, size_t headers_len,
                            const uint8_t *body, size_t body_len,
                            int32_t has_model, const char *model, size_t model_len) {
    (void)route; (void)headers; (void)headers_len; (void)body; (void)body_len;
    (void)has_model; (void)model; (void)model_len;

    int reads = equals(method, method_len, "GET") || equals(method, method_len, "HEAD");
    for (const char *const *p = management; *p && !reads; p++) {
        if (!starts_with(path, path_len, *p))
            continue;
        static const char text[] =
            "model management is disabled on this service (its models are baked into the image): ";
        size_t n = 0;
        for (; text[n]; n++)
            message[n] = text[n];
        for (size_t i = 0; i < path_len && n < sizeof message; i++)
            message[n++] = path[i];
        decision.tag = 2;
        decision.reject.status = 403;
        decision.reject.message = message;
        decision.reject.message_len = n;
        decision.reject.headers.ptr = 0;
        decision.reject.headers.len = 0;
        return &decision;
    }
    decision.tag = 0;
    return &decision;
}
