/* The files, models, inference and service handlers behind the REAL transport: lorad_api_server_start() on
 * 127.0.0.1 port 0, a real store in a temporary state directory, every handler installed, and
 * real HTTP from the curl tool. References are independent of our code: sha256sum for digests,
 * the uploaded bytes for downloads, the safetensors header (read by Python) and the llama2.c file
 * size for parameter counts, and a tally of the jobs this test created for the gauges.
 *
 * The tests share one server and run in order; each keeps the job tally up to date. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "tar.h"
#include "app.h"
#include "handlers.h"
#include "infer_service.h"
#include "load_hf.h"
#include "server.h"
#include "store.h"

static char *state_dir, *files_dir, *jobs_dir, *uploads_dir, *models_dir, *scratch;
static struct lorad_app app;
static struct lorad_store *store;
static struct lorad_api_server *srv;
static int64_t tally[LORAD_JOB_STATUS_COUNT]; /* jobs this test created, by status */

/* ---- HTTP through curl ---------------------------------------------------------------------- */

struct resp {
    int status;
    char *body;      /* NUL-terminated */
    size_t len;
    char *headers;   /* the raw header block */
    json_t *json;    /* parsed body, or NULL */
};

static void resp_free(struct resp *r) {
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* Runs `curl <args> URL` where the printf-formatted tail gives the options and then the path
 * (everything after http://127.0.0.1:PORT). The arguments are the test's own strings. */
__attribute__((format(printf, 1, 2))) static struct resp http(const char *fmt, ...) {
    char tail[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof tail, fmt, ap);
    va_end(ap);
    char *body = test_path(scratch, "body"), *hdr = test_path(scratch, "headers");
    unlink(body);
    unlink(hdr);
    /* The path is the last word of tail: prefix it with the server's address. */
    char *last = strrchr(tail, ' ');
    char *path = last ? last + 1 : tail;
    if (last) *last = '\0';
    snprintf(cmd, sizeof cmd, "curl -sS -g -o '%s' -D '%s' -w '%%{http_code}' %s 'http://127.0.0.1:%u%s'", body, hdr,
             last ? tail : "", lorad_api_server_port(srv), path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct resp r = {0};
    assert_int_equal(fscanf(p, "%d", &r.status), 1);
    assert_int_equal(pclose(p), 0);
    r.body = test_read_file(body, &r.len);
    size_t hl;
    r.headers = test_read_file(hdr, &hl);
    /* a sampled byte token may be <0x00>: the server writes it as \u0000, which JSON allows */
    r.json = json_loadb(r.body, r.len, JSON_ALLOW_NUL, NULL);
    free(body);
    free(hdr);
    return r;
}

static const char *jstr(json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}
static json_int_t jint(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}
static const char *err_param(const struct resp *r) {
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "param"));
}
static const char *err_code(const struct resp *r) {
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
}

/* sha256sum's digest of a file: the independent reference. */
static void sha256sum(const char *path, char hex[65]) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%64s", hex), 1);
    pclose(p);
}

static char *write_scratch(const char *name, const char *text) {
    char *path = test_path(scratch, name);
    test_write_file(path, text, strlen(text));
    return path;
}

static int count_dir_entries(const char *dir);

/* The transport unlinks a refused upload's temp file when the request completes, which may be
 * just after the client has its answer: wait up to 2 s for the upload directory to empty. */
static int uploads_left(void) {
    int n = 0;
    for (int i = 0; i < 200 && (n = count_dir_entries(uploads_dir)) != 0; i++) usleep(10000);
    return n;
}

static int count_dir_entries(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    assert_int_equal(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

/* Uploads path as multipart and returns the file object's id (copied into id). */
static void upload(const char *path, const char *filename, char id[LORAD_STORE_ID_MAX]) {
    struct resp r = http("-F purpose=fine-tune -F 'file=@%s;filename=%s' /v1/files", path, filename);
    if (r.status != 200) fprintf(stderr, "%s\n", r.body);
    assert_int_equal(r.status, 200);
    snprintf(id, LORAD_STORE_ID_MAX, "%s", jstr(r.json, "id"));
    resp_free(&r);
}

static const char *GOOD =
    "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n"
    "{\"prompt\": \"3+3=\", \"completion\": \"6\"}\n"
    "\n"
    "{\"prompt\": \"capital of France?\", \"completion\": \"Paris\"}\n";

/* ---- files ---------------------------------------------------------------------------------- */

static char good_id[LORAD_STORE_ID_MAX];

static void test_upload_multipart_and_raw(void **state) {
    (void)state;
    char *good = write_scratch("good.jsonl", GOOD), hex[65];
    sha256sum(good, hex);

    struct resp r = http("-F purpose=fine-tune -F 'file=@%s;filename=train.jsonl' /v1/files", good);
    assert_int_equal(r.status, 200);
    assert_true(lorad_store_id_valid("file-", jstr(r.json, "id")));
    snprintf(good_id, sizeof good_id, "%s", jstr(r.json, "id"));
    assert_string_equal(jstr(r.json, "object"), "file");
    assert_string_equal(jstr(r.json, "filename"), "train.jsonl");
    assert_string_equal(jstr(r.json, "purpose"), "fine-tune");
    assert_string_equal(jstr(r.json, "status"), "processed");
    assert_true(json_is_null(json_object_get(r.json, "status_details")));
    assert_string_equal(jstr(r.json, "sha256"), hex);
    assert_int_equal(jint(r.json, "bytes"), strlen(GOOD));
    assert_int_equal(jint(r.json, "line_count"), 4);
    assert_string_equal(jstr(r.json, "format"), "prompt_completion");
    json_t *v = json_object_get(r.json, "validation");
    assert_int_equal(jint(v, "records"), 3);
    assert_int_equal(jint(v, "blank"), 1);
    assert_int_equal(jint(v, "invalid"), 0);
    /* The blob is the upload, byte for byte, under files/<id>; no temp file is left behind. */
    char *blob = test_path(files_dir, good_id);
    size_t n;
    char *bytes = test_read_file(blob, &n);
    assert_int_equal(n, strlen(GOOD));
    assert_memory_equal(bytes, GOOD, n);
    free(bytes);
    free(blob);
    assert_int_equal(uploads_left(), 0);
    resp_free(&r);

    /* A raw body with ?filename= (purpose defaults to fine-tune). */
    r = http("-H 'Content-Type: application/octet-stream' --data-binary @%s /v1/files?filename=raw.jsonl", good);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "filename"), "raw.jsonl");
    assert_string_equal(jstr(r.json, "status"), "processed");
    assert_string_equal(jstr(r.json, "sha256"), hex);
    resp_free(&r);

    /* Wrong purpose, empty file, raw body without a filename. */
    r = http("-F purpose=assistants -F 'file=@%s' /v1/files", good);
    assert_int_equal(r.status, 400);
    assert_string_equal(err_param(&r), "purpose");
    resp_free(&r);
    char *empty = write_scratch("empty.jsonl", "");
    r = http("-F purpose=fine-tune -F 'file=@%s' /v1/files", empty);
    assert_int_equal(r.status, 400);
    assert_string_equal(err_code(&r), "empty_file");
    assert_string_equal(err_param(&r), "file");
    resp_free(&r);
    r = http("-H 'Content-Type: application/octet-stream' --data-binary @%s /v1/files", good);
    assert_int_equal(r.status, 400);
    assert_string_equal(err_param(&r), "filename");
    resp_free(&r);
    assert_int_equal(uploads_left(), 0);
    free(empty);
    free(good);
}

/* A file with bad lines is kept with status "error" and a report naming each bad line. */
static void test_validation_report(void **state) {
    (void)state;
    char *bad = write_scratch("bad.jsonl",
                              "{\"prompt\": \"a\", \"completion\": \"b\"}\n"
                              "{\"prompt\": \"a\", \"completion\": \n"          /* line 2: broken JSON */
                              "{\"prompt\": \"c\", \"completion\": \"d\"}\n"
                              "{\"prompt\": \"e\"}\n");                          /* line 4: no completion */
    struct resp r = http("-F purpose=fine-tune -F 'file=@%s;filename=bad.jsonl' /v1/files", bad);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "status"), "error");
    json_t *v = json_object_get(r.json, "validation");
    assert_int_equal(jint(v, "records"), 2);
    assert_int_equal(jint(v, "invalid"), 2);
    json_t *lines = json_object_get(v, "bad_lines");
    assert_int_equal(json_array_size(lines), 2);
    assert_int_equal(jint(json_array_get(lines, 0), "line"), 2);
    assert_string_equal(jstr(json_array_get(lines, 0), "problem"), "invalid_json");
    assert_int_equal(jint(json_array_get(lines, 1), "line"), 4);
    assert_string_equal(jstr(json_array_get(lines, 1), "problem"), "wrong_type");
    assert_non_null(strstr(jstr(r.json, "status_details"), "2 of 4 lines are invalid; first: line 2"));
    /* The same report comes back from GET. */
    char path[128];
    snprintf(path, sizeof path, "/v1/files/%s", jstr(r.json, "id"));
    struct resp g = http("%s", path);
    assert_int_equal(g.status, 200);
    assert_true(json_equal(g.json, r.json));
    resp_free(&g);
    resp_free(&r);
    free(bad);
}

static void test_list_pagination(void **state) {
    (void)state;
    /* Five fresh uploads; walking with limit=2 must meet them newest first, each once. */
    char ids[5][LORAD_STORE_ID_MAX];
    char *good = write_scratch("page.jsonl", GOOD);
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%d.jsonl", i);
        upload(good, name, ids[i]);
    }
    free(good);
    char after[LORAD_STORE_ID_MAX] = "";
    int seen = 0, pages = 0, total = 0;
    for (;;) {
        struct resp r = after[0] ? http("/v1/files?limit=2&after=%s", after) : http("/v1/files?limit=2");
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "object"), "list");
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_array_size(data) >= 1 && json_array_size(data) <= 2);
        assert_string_equal(jstr(r.json, "first_id"), jstr(json_array_get(data, 0), "id"));
        assert_string_equal(jstr(r.json, "last_id"), jstr(json_array_get(data, json_array_size(data) - 1), "id"));
        size_t i;
        json_t *f;
        json_array_foreach(data, i, f) {
            /* The newest upload comes first: ids[4], ids[3], ... */
            if (seen < 5) {
                assert_string_equal(jstr(f, "id"), ids[4 - seen]);
                seen++;
            }
            total++;
        }
        pages++;
        bool more = json_is_true(json_object_get(r.json, "has_more"));
        snprintf(after, sizeof after, "%s", jstr(r.json, "last_id"));
        resp_free(&r);
        if (!more) break;
    }
    assert_int_equal(seen, 5);
    /* 5 here + 2 + 1 uploaded by the earlier tests (good, raw, bad). */
    assert_int_equal(total, 8);
    assert_int_equal(pages, 4);

    struct resp r = http("/v1/files?purpose=fine-tune&limit=100");
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 8);
    assert_false(json_is_true(json_object_get(r.json, "has_more")));
    resp_free(&r);
    r = http("/v1/files?limit=1000"); /* accepted, and served as a page of at most 100 */
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 8);
    resp_free(&r);
    r = http("/v1/files?purpose=assistants");
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 0);
    resp_free(&r);
    r = http("/v1/files?limit=0");
    assert_int_equal(r.status, 400);
    assert_string_equal(err_param(&r), "limit");
    resp_free(&r);
    r = http("/v1/files?limit=x");
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = http("/v1/files?after=nonsense");
    assert_int_equal(r.status, 400);
    assert_string_equal(err_param(&r), "after");
    resp_free(&r);
    r = http("/v1/files?after=file-AAAAAAAAAAAAAAAAAAAAAAAA");
    assert_int_equal(r.status, 404);
    assert_string_equal(err_param(&r), "after");
    resp_free(&r);
}

static void test_get_and_content(void **state) {
    (void)state;
    struct resp r = http("/v1/files/%s", good_id);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "id"), good_id);
    assert_string_equal(jstr(r.json, "filename"), "train.jsonl");
    resp_free(&r);

    r = http("/v1/files/%s/content", good_id);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, strlen(GOOD));
    assert_memory_equal(r.body, GOOD, r.len);
    assert_non_null(strcasestr(r.headers, "Content-Disposition: attachment; filename=\"train.jsonl\""));
    assert_non_null(strcasestr(r.headers, "Content-Type: application/jsonl"));
    resp_free(&r);

    r = http("-H 'Range: bytes=2-9' /v1/files/%s/content", good_id);
    assert_int_equal(r.status, 206);
    assert_int_equal(r.len, 8);
    assert_memory_equal(r.body, GOOD + 2, 8);
    resp_free(&r);

    /* A filename with a quote and a non-ASCII byte cannot break the header. */
    char *good = write_scratch("q.jsonl", GOOD);
    r = http("-H 'Content-Type: application/octet-stream' --data-binary @%s /v1/files?filename=a%%22b%%C3%%A9.bin", good);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "filename"), "a\"b\xc3\xa9.bin");
    struct resp c = http("/v1/files/%s/content", jstr(r.json, "id"));
    assert_int_equal(c.status, 200);
    assert_non_null(strcasestr(c.headers, "Content-Disposition: attachment; filename=\"a_b__.bin\""));
    assert_non_null(strcasestr(c.headers, "Content-Type: application/octet-stream"));
    resp_free(&c);
    resp_free(&r);
    free(good);
}

static void create_job(const char *model, const char *file_id, const char *suffix, char out[LORAD_STORE_ID_MAX]) {
    json_t *spec = json_pack("{s:{s:i}}", "hyperparameters", "n_epochs", 1);
    struct lorad_store_job_new j = {.model = model, .training_file = file_id, .spec = spec, .seed = 1,
                                    .suffix = suffix, .status = LORAD_JOB_QUEUED};
    json_t *job = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_job_create(store, &j, &job, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    snprintf(out, LORAD_STORE_ID_MAX, "%s", jstr(job, "id"));
    json_decref(job);
    json_decref(spec);
    tally[LORAD_JOB_QUEUED]++;
}

static void move_job(const char *id, enum lorad_job_status from, enum lorad_job_status to, const char *ft_model) {
    struct lorad_store_transition t = {.to = to, .fine_tuned_model = ft_model};
    struct lorad_error err = {0};
    int r = lorad_store_job_transition(store, id, &t, NULL, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    tally[from]--;
    tally[to]++;
}

static void test_delete(void **state) {
    (void)state;
    char *good = write_scratch("del.jsonl", GOOD), id[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    upload(good, "del.jsonl", id);
    free(good);
    char *blob = test_path(files_dir, id);
    assert_int_equal(access(blob, F_OK), 0);

    /* In use by a queued job: 409, and nothing is deleted. */
    create_job("stories260K.bin", id, NULL, job);
    struct resp r = http("-X DELETE /v1/files/%s", id);
    assert_int_equal(r.status, 409);
    assert_string_equal(err_code(&r), "file_in_use");
    assert_non_null(strstr(jstr(json_object_get(r.json, "error"), "message"), job));
    resp_free(&r);
    assert_int_equal(access(blob, F_OK), 0);
    r = http("/v1/files/%s", id);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    /* Once the job is over, the file goes, blob included. */
    move_job(job, LORAD_JOB_QUEUED, LORAD_JOB_CANCELLED, NULL);
    r = http("-X DELETE /v1/files/%s", id);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "id"), id);
    assert_string_equal(jstr(r.json, "object"), "file");
    assert_true(json_is_true(json_object_get(r.json, "deleted")));
    resp_free(&r);
    assert_int_equal(access(blob, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    r = http("/v1/files/%s", id);
    assert_int_equal(r.status, 404);
    assert_string_equal(err_param(&r), "file_id");
    resp_free(&r);
    r = http("/v1/files/%s/content", id);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    r = http("-X DELETE /v1/files/%s", id);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    free(blob);
}

static void test_malformed_ids(void **state) {
    (void)state;
    const char *bad[] = {"file-abc", "file-AAAAAAAAAAAAAAAAAAAAAAA%2F", "..", "ftjob-AAAAAAAAAAAAAAAAAAAAAAAA",
                         "file-AAAAAAAAAAAAAAAAAAAAAAAAA"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct resp r = http("/v1/files/%s", bad[i]);
        if (r.status == 404 && r.json && err_param(&r)) assert_string_equal(err_param(&r), "file_id");
        assert_int_equal(r.status, 404);
        resp_free(&r);
        r = http("/v1/files/%s/content", bad[i]);
        assert_int_equal(r.status, 404);
        resp_free(&r);
        r = http("-X DELETE /v1/files/%s", bad[i]);
        assert_int_equal(r.status, 404);
        resp_free(&r);
    }
}

/* ---- models --------------------------------------------------------------------------------- */

static char ft_job[LORAD_STORE_ID_MAX], ft_name[256];

/* Parameters of the HF demo model: the elements of every tensor in model.safetensors, counted
 * by Python from the file's own header. */
static long long safetensors_numel(const char *path) {
    char cmd[4500];
    snprintf(cmd, sizeof cmd,
             "%s -c 'import json,struct,sys,math; f=open(sys.argv[1],\"rb\"); n=struct.unpack(\"<Q\",f.read(8))[0]; "
             "h=json.loads(f.read(n)); print(sum(math.prod(v[\"shape\"]) for k,v in h.items() if k!=\"__metadata__\"))' '%s'",
             LORAD_PYTHON, path);
    FILE *p = popen(cmd, "r");
    long long n = -1;
    assert_int_equal(fscanf(p, "%lld", &n), 1);
    pclose(p);
    return n;
}

/* Writes a PEFT + GGUF + tar adapter into dir the way a job does, with the engine's adapter writers. */
static void write_adapter_dir(const char *dir, const char *base_dir) {
    struct lorad_llama_config cfg;
    struct lorad_error err = {0};
    assert_int_equal(lorad_hf_config_load(base_dir, &cfg, &err), 0);
    const int r = 4, n_layers = cfg.n_layers;
    struct lorad_adapter_tensor t[16];
    float *bufs[16];
    int n = 0;
    for (int l = 0; l < n_layers; l++)
        for (int m = 0; m < 2; m++)
            for (int ab = 0; ab < 2; ab++) {
                int out = m == 0 ? cfg.n_heads * cfg.head_dim : cfg.n_kv_heads * cfg.head_dim;
                snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.self_attn.%s.lora_%c.weight", l,
                         m == 0 ? "q_proj" : "v_proj", ab ? 'B' : 'A');
                t[n].rows = ab ? out : r;
                t[n].cols = ab ? r : cfg.dim;
                bufs[n] = malloc((size_t)(t[n].rows * t[n].cols) * sizeof(float));
                for (int64_t i = 0; i < t[n].rows * t[n].cols; i++) bufs[n][i] = (float)sin(0.1 * (double)i + n);
                t[n].data = bufs[n];
                n++;
            }
    struct lorad_adapter_meta meta = {.r = r, .alpha = 8, .n_targets = 2, .targets = {"q_proj", "v_proj"}};
    snprintf(meta.base_model, sizeof meta.base_model, "demo-hf");
    char path[4200];
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, t, n, &err), 0);
    snprintf(path, sizeof path, "%s/adapter.gguf", dir);
    assert_int_equal(lorad_adapter_write_gguf(path, &meta, t, n, &cfg, &err), 0);
    snprintf(path, sizeof path, "%s/adapter.tar", dir);
    const char *names[] = {"adapter_model.safetensors", "adapter_config.json"};
    assert_int_equal(lorad_tar_write(path, dir, names, 2, "adapter", &err), 0);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

/* jobs/<job>/adapter/, as a finished job leaves it. */
static void write_adapter(const char *job_id, const char *base_dir) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s/adapter", jobs_dir, job_id);
    write_adapter_dir(dir, base_dir);
}

static json_t *find_model(json_t *list, const char *id) {
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(list, "data"), i, m) if (!strcmp(jstr(m, "id"), id)) return m;
    return NULL;
}

static void test_models(void **state) {
    (void)state;
    /* Base models: an HF directory, a llama2.c file and a broken GGUF. */
    char *hf = test_path(models_dir, "demo-hf");
    char cmd[4500];
    snprintf(cmd, sizeof cmd, "%s %s/scripts/make-demo-model '%s' --dim 32 --layers 2 --heads 4 --kv-heads 2 --hidden 64 --dtype BF16",
             LORAD_PYTHON, LORAD_SOURCE_DIR, hf);
    assert_int_equal(system(cmd), 0);
    char *bin = test_path(models_dir, "stories260K.bin");
    assert_int_equal(symlink(test_shared_data("stories260K.bin"), bin), 0);
    /* A Q8_0 GGUF written from the format spec by tests/formats/write_fixtures.py (dim 64,
     * 2 layers, context 128, vocab 300); truth.f32 holds every one of its parameters as f32. */
    char *fx = test_path(scratch, "fx");
    char *fx_argv[] = {LORAD_PYTHON, LORAD_SOURCE_DIR "/tests/formats/write_fixtures.py", fx, NULL};
    assert_int_equal(test_run(fx_argv), 0);
    snprintf(cmd, sizeof cmd, "cp '%s/gguf_q8_0.gguf' '%s/fixture-q8.gguf'", fx, models_dir);
    assert_int_equal(system(cmd), 0);
    char *broken = test_path(models_dir, "broken.gguf");
    test_write_file(broken, "GGUF\x03\0\0\0garbage", 15);

    /* A succeeded job on demo-hf with its adapter on disk. */
    create_job("demo-hf", good_id, "mine", ft_job);
    assert_int_equal(lorad_store_fine_tuned_model_name("demo-hf", "mine", ft_job, ft_name, sizeof ft_name), 0);
    move_job(ft_job, LORAD_JOB_QUEUED, LORAD_JOB_RUNNING, NULL);
    move_job(ft_job, LORAD_JOB_RUNNING, LORAD_JOB_SUCCEEDED, ft_name);
    write_adapter(ft_job, hf);

    struct resp r = http("/v1/models");
    if (getenv("LORAD_TEST_VERBOSE")) fprintf(stderr, "%s\n", r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "object"), "list");
    json_t *m = find_model(r.json, "demo-hf");
    assert_non_null(m);
    assert_string_equal(jstr(m, "object"), "model");
    assert_string_equal(jstr(m, "owned_by"), "lorad");
    assert_string_equal(jstr(m, "format"), "hf");
    assert_string_equal(jstr(m, "dtype"), "BF16");
    assert_string_equal(jstr(m, "architecture"), "LlamaForCausalLM");
    assert_int_equal(jint(m, "context_length"), 1024); /* max_position_embeddings of make-demo-model */
    char *st = test_path(hf, "model.safetensors");
    assert_int_equal(jint(m, "parameter_count"), safetensors_numel(st));
    free(st);
    assert_true(jint(m, "created") > 0);

    /* stories260K: every f32 after the 28-byte header is a parameter, except the two RoPE
     * tables (seq_len * head_size / 2 floats each). */
    m = find_model(r.json, "stories260K.bin");
    assert_non_null(m);
    assert_string_equal(jstr(m, "format"), "llama2c");
    assert_string_equal(jstr(m, "dtype"), "F32");
    struct stat sb;
    assert_int_equal(stat(test_shared_data("stories260K.bin"), &sb), 0);
    size_t hl;
    int32_t *h = test_read_file(test_shared_data("stories260K.bin"), &hl);
    long long head_size = h[0] / h[3], seq_len = h[6];
    free(h);
    assert_int_equal(jint(m, "context_length"), seq_len);
    assert_int_equal(jint(m, "parameter_count"), ((long long)sb.st_size - 28) / 4 - seq_len * head_size);

    m = find_model(r.json, "fixture-q8.gguf");
    assert_non_null(m);
    assert_string_equal(jstr(m, "format"), "gguf");
    assert_string_equal(jstr(m, "architecture"), "llama");
    assert_string_equal(jstr(m, "dtype"), "Q8_0");
    char *truth = test_path(fx, "truth.f32");
    assert_int_equal(stat(truth, &sb), 0);
    assert_int_equal(jint(m, "parameter_count"), sb.st_size / 4);
    assert_int_equal(jint(m, "context_length"), 128);
    assert_int_equal(jint(m, "hidden_size"), 64);
    assert_int_equal(jint(m, "num_layers"), 2);
    assert_int_equal(jint(m, "vocab_size"), 300);
    assert_null(json_object_get(m, "error"));
    free(truth);
    free(fx);

    m = find_model(r.json, "broken.gguf");
    assert_non_null(m);
    assert_non_null(jstr(m, "error"));
    assert_int_equal(strncmp(jstr(m, "error"), "broken.gguf: ", 13), 0); /* named, and ... */
    assert_null(strstr(jstr(m, "error"), state_dir));                   /* ... no server path */

    m = find_model(r.json, ft_name);
    assert_non_null(m);
    assert_string_equal(jstr(m, "owned_by"), "user");
    assert_string_equal(jstr(m, "root"), "demo-hf");
    assert_string_equal(jstr(m, "parent"), "demo-hf");
    assert_string_equal(jstr(m, "fine_tuning_job_id"), ft_job);
    json_t *ad = json_object_get(m, "adapter");
    assert_int_equal(jint(ad, "r"), 4);
    assert_float_equal(json_number_value(json_object_get(ad, "alpha")), 8.0, 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(ad, "target_modules"), 0)), "q_proj");
    assert_string_equal(json_string_value(json_array_get(json_object_get(ad, "target_modules"), 1)), "v_proj");
    assert_int_equal(json_array_size(json_object_get(m, "files")), 4);
    json_t *listed = json_deep_copy(m);
    resp_free(&r);

    /* One model, by its name as is and percent-encoded. */
    r = http("/v1/models/%s", ft_name);
    assert_int_equal(r.status, 200);
    assert_true(json_equal(r.json, listed));
    resp_free(&r);
    json_decref(listed);
    char enc[300];
    size_t e = 0;
    for (const char *p = ft_name; *p && e + 4 < sizeof enc; p++) {
        if (*p == ':') memcpy(enc + e, "%3A", 3), e += 3;
        else enc[e++] = *p;
    }
    enc[e] = '\0';
    r = http("/v1/models/%s", enc);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "id"), ft_name);
    resp_free(&r);
    r = http("/v1/models/stories260K.bin");
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "format"), "llama2c");
    resp_free(&r);

    /* Unknown names, a right job id under a wrong name, a malformed id, a job not succeeded. */
    char wrong[300], queued[LORAD_STORE_ID_MAX], qname[300];
    snprintf(wrong, sizeof wrong, "ft:other:mine:%s", ft_job);
    create_job("demo-hf", good_id, NULL, queued);
    snprintf(qname, sizeof qname, "ft:demo-hf:lorad:%s", queued);
    const char *missing[] = {"nope", "ft:demo-hf:mine:ftjob-123", wrong, qname, "ft:demo-hf:mine:../../etc",
                             "ft:x:y:ftjob-AAAAAAAAAAAAAAAAAAAAAAAA"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        r = http("/v1/models/%s", missing[i]);
        assert_int_equal(r.status, 404);
        if (r.json && err_param(&r)) assert_string_equal(err_param(&r), "model");
        resp_free(&r);
        r = http("/v1/models/%s/adapter.tar", missing[i]);
        assert_int_equal(r.status, 404);
        resp_free(&r);
    }
    r = http("/v1/models/demo-hf/adapter.tar");
    assert_int_equal(r.status, 404);
    assert_string_equal(err_param(&r), "model");
    resp_free(&r);

    /* Downloads: the bytes of the files on disk, with their names and types. */
    static const struct { const char *file, *type; } dl[] = {
        {"adapter_model.safetensors", "application/octet-stream"}, {"adapter_config.json", "application/json"},
        {"adapter.tar", "application/x-tar"}, {"adapter.gguf", "application/octet-stream"}};
    for (size_t i = 0; i < 4; i++) {
        char path[4200], want[200];
        snprintf(path, sizeof path, "%s/%s/adapter/%s", jobs_dir, ft_job, dl[i].file);
        size_t n;
        char *bytes = test_read_file(path, &n);
        r = http("/v1/models/%s/%s", ft_name, dl[i].file);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.len, n);
        assert_memory_equal(r.body, bytes, n);
        snprintf(want, sizeof want, "Content-Disposition: attachment; filename=\"%s-%s\"", ft_job, dl[i].file);
        assert_non_null(strcasestr(r.headers, want));
        snprintf(want, sizeof want, "Content-Type: %s", dl[i].type);
        assert_non_null(strcasestr(r.headers, want));
        resp_free(&r);
        if (i == 2) {
            r = http("-H 'Range: bytes=512-1023' /v1/models/%s/adapter.tar", ft_name);
            assert_int_equal(r.status, 206);
            assert_int_equal(r.len, 512);
            assert_memory_equal(r.body, bytes + 512, 512);
            snprintf(want, sizeof want, "Content-Range: bytes 512-1023/%zu", n);
            assert_non_null(strcasestr(r.headers, want));
            resp_free(&r);
        }
        free(bytes);
    }

    /* A succeeded job whose adapter directory is missing: listed, without adapter or files, with
     * an error that names the adapter file and not the server's path; its downloads are 404. */
    char lost[LORAD_STORE_ID_MAX], lost_name[256];
    create_job("demo-hf", good_id, NULL, lost);
    assert_int_equal(lorad_store_fine_tuned_model_name("demo-hf", NULL, lost, lost_name, sizeof lost_name), 0);
    move_job(lost, LORAD_JOB_QUEUED, LORAD_JOB_RUNNING, NULL);
    move_job(lost, LORAD_JOB_RUNNING, LORAD_JOB_SUCCEEDED, lost_name);
    r = http("/v1/models/%s", lost_name);
    assert_int_equal(r.status, 200);
    assert_true(json_is_null(json_object_get(r.json, "adapter")));
    assert_int_equal(json_array_size(json_object_get(r.json, "files")), 0);
    assert_int_equal(strncmp(jstr(r.json, "error"), "adapter/adapter_config.json", 27), 0);
    assert_null(strstr(jstr(r.json, "error"), state_dir));
    resp_free(&r);
    r = http("/v1/models/%s/adapter.gguf", lost_name);
    assert_int_equal(r.status, 404);
    assert_string_equal(err_param(&r), "model");
    resp_free(&r);

    /* The description follows the model on disk: a changed config.json is read again. */
    char *cfg_path = test_path(hf, "config.json");
    size_t n;
    char *text = test_read_file(cfg_path, &n);
    char *at = strstr(text, "\"max_position_embeddings\": 1024");
    assert_non_null(at);
    memcpy(at, "\"max_position_embeddings\": 2048", 31);
    test_write_file(cfg_path, text, n);
    free(text);
    struct timespec ts[2] = {{0, UTIME_NOW}, {12345, 0}}; /* a different mtime even within one tick */
    assert_int_equal(utimensat(AT_FDCWD, cfg_path, ts, 0), 0);
    r = http("/v1/models/demo-hf");
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.json, "context_length"), 2048);
    resp_free(&r);
    free(cfg_path);
    free(hf);
    free(bin);
    free(broken);
}


/* ---- checkpoints as models ------------------------------------------------------------------ */

static char ckpt_name[300], run_ckpt_name[300];

/* Records a checkpoint at step of job, its adapter written under jobs/<job>/checkpoints/step-N,
 * and returns its published name (ft:<model>:<suffix>:<job>:ckpt-step-N, the store's format). */
static void add_checkpoint(const char *job, const char *suffix, int step, char *name, size_t cap) {
    char rel[200], abs[4300];
    snprintf(rel, sizeof rel, "jobs/%s/checkpoints/step-%d", job, step);
    snprintf(abs, sizeof abs, "%s/%s", state_dir, rel);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", abs);
    assert_int_equal(system(cmd), 0);
    char *hf = test_path(models_dir, "demo-hf");
    write_adapter_dir(abs, hf);
    free(hf);
    struct lorad_metrics_writer *w = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_metrics_writer_new(store, job, 0, &w, &err), 0);
    char id[LORAD_STORE_ID_MAX];
    int r = lorad_metrics_writer_checkpoint(w, step, rel, NULL, 0, id, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    lorad_metrics_writer_free(w);
    snprintf(name, cap, "ft:demo-hf:%s:%s:ckpt-step-%d", suffix ? suffix : "lorad", job, step);
}

/* Every checkpoint is a model: listed after the adapters, its parent the fine-tuned model of a
 * succeeded job or the base of one that has not finished; retrievable by its name. */
static void test_checkpoint_models(void **state) {
    (void)state;
    add_checkpoint(ft_job, "mine", 3, ckpt_name, sizeof ckpt_name);
    char running[LORAD_STORE_ID_MAX];
    create_job("demo-hf", good_id, NULL, running);
    move_job(running, LORAD_JOB_QUEUED, LORAD_JOB_RUNNING, NULL);
    add_checkpoint(running, NULL, 7, run_ckpt_name, sizeof run_ckpt_name);

    struct resp r = http("/v1/models");
    assert_int_equal(r.status, 200);
    json_t *m = find_model(r.json, ckpt_name);
    if (!m) fprintf(stderr, "%s not in %s\n", ckpt_name, r.body);
    assert_non_null(m);
    assert_string_equal(jstr(m, "object"), "model");
    assert_string_equal(jstr(m, "kind"), "checkpoint");
    assert_string_equal(jstr(m, "owned_by"), "user");
    assert_string_equal(jstr(m, "parent"), ft_name);
    assert_string_equal(jstr(m, "root"), "demo-hf");
    assert_string_equal(jstr(m, "fine_tuning_job_id"), ft_job);
    assert_int_equal(jint(m, "step_number"), 3);
    assert_true(lorad_store_id_valid("ftckpt-", jstr(m, "checkpoint_id")));
    json_t *listed = json_deep_copy(m);
    m = find_model(r.json, run_ckpt_name);
    assert_non_null(m);
    assert_string_equal(jstr(m, "parent"), "demo-hf"); /* its job has no fine-tuned model yet */
    /* Order: base models, then adapters, then checkpoints. */
    size_t i, at_ckpt = 0, at_adapter = 0;
    json_array_foreach(json_object_get(r.json, "data"), i, m) {
        if (!strcmp(jstr(m, "id"), ckpt_name)) at_ckpt = i;
        if (!strcmp(jstr(m, "id"), ft_name)) at_adapter = i;
    }
    assert_true(at_adapter < at_ckpt);
    resp_free(&r);

    r = http("/v1/models/%s", ckpt_name);
    assert_int_equal(r.status, 200);
    assert_true(json_equal(r.json, listed));
    resp_free(&r);
    json_decref(listed);
    char wrong[400];
    const char *missing[] = {"ft:demo-hf:mine:%s:ckpt-step-4", "ft:other:mine:%s:ckpt-step-3", "ft:demo-hf:mine:%s:ckpt-step-"};
    for (size_t k = 0; k < 3; k++) {
        snprintf(wrong, sizeof wrong, missing[k], ft_job);
        r = http("/v1/models/%s", wrong);
        assert_int_equal(r.status, 404);
        assert_string_equal(err_param(&r), "model");
        resp_free(&r);
    }
}

/* ---- inference ------------------------------------------------------------------------------ */

/* POSTs body (a JSON text without single quotes) to path. */
static struct resp post(const char *path, const char *body) {
    char *f = write_scratch("req.json", body);
    struct resp r = http("-H 'Content-Type: application/json' --data-binary @%s %s", f, path);
    free(f);
    return r;
}

/* The data events of an SSE body: each JSON chunk, then ends_done says whether the last event was
 * [DONE]. Returns a new array. */
static json_t *sse_chunks(const char *body, bool *ends_done) {
    json_t *chunks = json_array();
    *ends_done = false;
    for (const char *p = body; p && *p;) {
        const char *end = strstr(p, "\n\n");
        assert_non_null(end); /* every event ends with a blank line */
        if (strncmp(p, "data: ", 6) == 0) {
            assert_false(*ends_done); /* nothing after [DONE] */
            if (strncmp(p + 6, "[DONE]\n", 7) == 0) *ends_done = true;
            else {
                json_t *c = json_loadb(p + 6, (size_t)(end - p - 6), JSON_ALLOW_NUL, NULL);
                assert_non_null(c);
                json_array_append_new(chunks, c);
            }
        } else {
            assert_int_equal(p[0], ':'); /* a comment (keepalive); never an id: line */
        }
        p = end + 2;
    }
    return chunks;
}

static void test_inference_disabled(void **state) {
    (void)state;
    assert_null(app.infer);
    const char *routes[] = {"/v1/completions", "/v1/chat/completions"};
    for (int i = 0; i < 2; i++) {
        struct resp r = post(routes[i], "{\"model\": \"demo-hf\", \"prompt\": \"x\"}");
        assert_int_equal(r.status, 503);
        assert_string_equal(err_code(&r), "inference_disabled");
        resp_free(&r);
    }
}

static struct lorad_infer *infer;

static void test_inference_errors(void **state) {
    (void)state;
    struct lorad_infer_options o = {.threads = 1, .max_generations = 4, .max_context = 256};
    struct lorad_error err = {0};
    assert_int_equal(lorad_infer_new(&infer, &o, &err), 0);
    app.infer = infer;
    app.infer_max_generations = 4;
    static const struct {
        const char *path, *body, *param, *code;
        int status;
    } cases[] = {
        {"/v1/completions", "{\"model\": \"nope\", \"prompt\": \"x\"}", "model", "model_not_found", 404},
        {"/v1/completions", "{\"model\": \"ft:demo-hf:x:ftjob-AAAAAAAAAAAAAAAAAAAAAAAA\", \"prompt\": \"x\"}", "model",
         "model_not_found", 404},
        {"/v1/chat/completions", "{\"model\": \"../models/demo-hf\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
         "model", "model_not_found", 404},
        {"/v1/completions", "{\"model\": \"demo-hf\", \"prompt\": \"x\", \"temperature\": 3}", "temperature",
         "invalid_value", 400},
        {"/v1/completions", "{\"model\": \"demo-hf\", \"prompt\": \"x\", \"frobnicate\": 1}", "frobnicate",
         "unsupported_parameter", 400},
        {"/v1/completions", "{\"model\": \"demo-hf\", \"prompt\": [\"a\", \"b\"], \"n\": 3}", "n", "invalid_value", 400},
        {"/v1/chat/completions", "{\"model\": \"demo-hf\", \"messages\": []}", "messages", "invalid_value", 400},
        {"/v1/chat/completions",
         "{\"model\": \"demo-hf\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", "tools",
         "unsupported_parameter", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct resp r = post(cases[i].path, cases[i].body);
        if (r.status != cases[i].status) fprintf(stderr, "%s %s: %s\n", cases[i].path, cases[i].body, r.body);
        assert_int_equal(r.status, cases[i].status);
        assert_string_equal(err_param(&r), cases[i].param);
        assert_string_equal(err_code(&r), cases[i].code);
        resp_free(&r);
    }
    struct lorad_infer_stats st;
    lorad_infer_get_stats(infer, &st);
    assert_int_equal(st.running, 0); /* nothing refused holds a slot */
}

/* The texts of a reply's choices by index, as a JSON array (chat: message.content). */
static json_t *choice_texts(json_t *reply, bool chat) {
    json_t *out = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(reply, "choices"), i, c) {
        assert_int_equal(jint(c, "index"), (json_int_t)i);
        const char *t = chat ? jstr(json_object_get(c, "message"), "content") : jstr(c, "text");
        assert_non_null(t);
        json_array_append_new(out, json_string(t));
    }
    return out;
}

/* Completions: the reply's shape and usage; the stream of the same seeded request gives the same
 * texts in OpenAI's chunks; a prompt list numbers its choices prompt_index * n + choice. */
static void test_completions(void **state) {
    (void)state;
    const char *body = "{\"model\": \"demo-hf\", \"prompt\": [\"abc\", \"hello\"], \"max_tokens\": 6, \"seed\": 5, \"n\": 2}";
    struct resp r = post("/v1/completions", body);
    if (r.status != 200) fprintf(stderr, "%s\n", r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "object"), "text_completion");
    assert_true(lorad_store_id_valid("cmpl-", jstr(r.json, "id")));
    assert_string_equal(jstr(r.json, "model"), "demo-hf");
    assert_true(jint(r.json, "created") > 1700000000);
    json_t *texts = choice_texts(r.json, false);
    assert_int_equal(json_array_size(texts), 4);
    json_t *usage = json_object_get(r.json, "usage");
    /* make-demo-model's tokenizer is byte-level BPE without merges (one token per byte), and a
     * prompt starts with BOS as a prompt/completion record does: 1 + 3 and 1 + 5 tokens. */
    assert_int_equal(jint(usage, "prompt_tokens"), 4 + 6);
    json_int_t completion = jint(usage, "completion_tokens");
    assert_true(completion >= 4 && completion <= 4 * 6);
    assert_int_equal(jint(usage, "total_tokens"), 10 + completion);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r.json, "choices"), i, c) {
        assert_true(json_is_null(json_object_get(c, "logprobs")));
        const char *fr = jstr(c, "finish_reason");
        assert_true(!strcmp(fr, "stop") || !strcmp(fr, "length"));
    }
    resp_free(&r);

    /* The second prompt alone, seeded where its choices' seeds were (choice i draws with seed + i). */
    r = post("/v1/completions", "{\"model\": \"demo-hf\", \"prompt\": \"hello\", \"max_tokens\": 6, \"seed\": 7, \"n\": 2}");
    assert_int_equal(r.status, 200);
    json_t *alone = choice_texts(r.json, false);
    assert_true(json_equal(json_array_get(alone, 0), json_array_get(texts, 2)));
    assert_true(json_equal(json_array_get(alone, 1), json_array_get(texts, 3)));
    json_decref(alone);
    resp_free(&r);

    /* Streamed: same id and created on every chunk, the choices' texts concatenate to the same,
     * each choice ends once with its finish_reason, usage null on each chunk and then alone. */
    char sbody[400];
    snprintf(sbody, sizeof sbody, "%.*s, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
             (int)strlen(body) - 1, body);
    r = post("/v1/completions", sbody);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.headers, "Content-Type: text/event-stream"));
    bool done;
    json_t *chunks = sse_chunks(r.body, &done);
    assert_true(done);
    char got[4][256] = {{0}};
    int finished[4] = {0};
    const char *id = jstr(json_array_get(chunks, 0), "id");
    json_int_t created = jint(json_array_get(chunks, 0), "created");
    size_t n_chunks = json_array_size(chunks);
    json_array_foreach(chunks, i, c) {
        assert_string_equal(jstr(c, "object"), "text_completion");
        assert_string_equal(jstr(c, "id"), id);
        assert_int_equal(jint(c, "created"), created);
        json_t *ch = json_object_get(c, "choices");
        if (i + 1 == n_chunks) { /* the usage chunk */
            assert_int_equal(json_array_size(ch), 0);
            assert_int_equal(jint(json_object_get(c, "usage"), "completion_tokens"), completion);
            assert_int_equal(jint(json_object_get(c, "usage"), "prompt_tokens"), 10);
            continue;
        }
        assert_true(json_is_null(json_object_get(c, "usage")));
        assert_int_equal(json_array_size(ch), 1);
        json_t *one = json_array_get(ch, 0);
        json_int_t k = jint(one, "index");
        assert_true(k >= 0 && k < 4);
        assert_int_equal(finished[k], 0); /* nothing after a choice's finish */
        strncat(got[k], jstr(one, "text"), sizeof got[k] - strlen(got[k]) - 1);
        if (!json_is_null(json_object_get(one, "finish_reason"))) finished[k] = 1;
    }
    for (int k = 0; k < 4; k++) {
        assert_int_equal(finished[k], 1);
        assert_string_equal(got[k], json_string_value(json_array_get(texts, (size_t)k)));
    }
    json_decref(chunks);
    json_decref(texts);
    resp_free(&r);
}

/* Chat: the reply's shape; the stream's role chunk first and delta {} last for each choice;
 * logprobs with their alternatives, the most likely first; adapters and checkpoints run. */
static void test_chat_completions(void **state) {
    (void)state;
    const char *body = "{\"model\": \"demo-hf\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
                       " {\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": 5, \"seed\": 1, \"n\": 2,"
                       " \"logprobs\": true, \"top_logprobs\": 2}";
    struct resp r = post("/v1/chat/completions", body);
    if (r.status != 200) fprintf(stderr, "%s\n", r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "object"), "chat.completion");
    assert_true(lorad_store_id_valid("chatcmpl-", jstr(r.json, "id")));
    json_t *texts = choice_texts(r.json, true);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r.json, "choices"), i, c) {
        json_t *msg = json_object_get(c, "message");
        assert_string_equal(jstr(msg, "role"), "assistant");
        assert_true(json_is_null(json_object_get(msg, "refusal")));
        json_t *content = json_object_get(json_object_get(c, "logprobs"), "content");
        assert_true(json_array_size(content) >= 1 && json_array_size(content) <= 5);
        size_t j;
        json_t *e;
        json_array_foreach(content, j, e) {
            double lp = json_number_value(json_object_get(e, "logprob"));
            assert_true(lp <= 0);
            json_t *top = json_object_get(e, "top_logprobs");
            assert_int_equal(json_array_size(top), 2);
            double t0 = json_number_value(json_object_get(json_array_get(top, 0), "logprob"));
            double t1 = json_number_value(json_object_get(json_array_get(top, 1), "logprob"));
            assert_true(t0 >= t1 && t0 >= lp - 1e-6); /* the most likely token is no less likely than any */
            /* bytes are the token's own; its text says the same unless it had to be mended */
            const char *tok = jstr(e, "token");
            assert_non_null(tok);
            size_t tok_len = json_string_length(json_object_get(e, "token"));
            json_t *bytes = json_object_get(e, "bytes");
            if (!strstr(tok, "\xef\xbf\xbd")) {
                assert_int_equal(json_array_size(bytes), tok_len);
                for (size_t b = 0; b < tok_len; b++)
                    assert_int_equal(json_integer_value(json_array_get(bytes, b)), (unsigned char)tok[b]);
            }
        }
    }
    resp_free(&r);

    char sbody[600];
    snprintf(sbody, sizeof sbody, "%.*s, \"stream\": true}", (int)strlen(body) - 1, body);
    r = post("/v1/chat/completions", sbody);
    assert_int_equal(r.status, 200);
    bool done;
    json_t *chunks = sse_chunks(r.body, &done);
    assert_true(done);
    int phase[2] = {0, 0}; /* 0: nothing yet, 1: role seen, 2: finished */
    char got[2][256] = {{0}};
    json_array_foreach(chunks, i, c) {
        assert_string_equal(jstr(c, "object"), "chat.completion.chunk");
        assert_null(json_object_get(c, "usage")); /* not asked for */
        json_t *one = json_array_get(json_object_get(c, "choices"), 0);
        json_int_t k = jint(one, "index");
        assert_true(k == 0 || k == 1);
        json_t *delta = json_object_get(one, "delta");
        if (phase[k] == 0) {
            assert_string_equal(jstr(delta, "role"), "assistant");
            assert_string_equal(jstr(delta, "content"), "");
            phase[k] = 1;
        } else if (json_object_size(delta) == 0) {
            assert_non_null(jstr(one, "finish_reason"));
            phase[k] = 2;
        } else {
            assert_int_equal(phase[k], 1);
            assert_true(json_is_null(json_object_get(one, "finish_reason")));
            strncat(got[k], jstr(delta, "content"), sizeof got[k] - strlen(got[k]) - 1);
        }
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(phase[k], 2);
        assert_string_equal(got[k], json_string_value(json_array_get(texts, (size_t)k)));
    }
    json_decref(chunks);
    json_decref(texts);
    resp_free(&r);

    /* The fine-tuned model (its adapter on demo-hf) and a checkpoint run too. */
    const char *models[] = {ft_name, ckpt_name};
    for (int k = 0; k < 2; k++) {
        char b[600];
        snprintf(b, sizeof b,
                 "{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 3}",
                 models[k]);
        r = post("/v1/chat/completions", b);
        if (r.status != 200) fprintf(stderr, "%s: %s\n", models[k], r.body);
        assert_int_equal(r.status, 200);
        assert_string_equal(jstr(r.json, "model"), models[k]);
        resp_free(&r);
    }
    struct lorad_infer_stats st;
    lorad_infer_get_stats(infer, &st);
    assert_int_equal(st.running, 0);
    assert_true(st.adapters_loaded >= 1);
}

/* ---- service -------------------------------------------------------------------------------- */

static bool live_rate(void *ctx, const char *job_id, double *ret) {
    const char *only = ctx;
    if (strcmp(job_id, only) != 0) return false;
    *ret = 999.5;
    return true;
}

static void test_readyz(void **state) {
    (void)state;
    atomic_store(&app.ready, false);
    struct resp r = http("/readyz");
    assert_int_equal(r.status, 503);
    assert_string_equal(err_code(&r), "not_ready");
    resp_free(&r);
    atomic_store(&app.ready, true);
    r = http("/readyz");
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.json, "status"), "ready");
    resp_free(&r);
    atomic_store(&app.stopping, true);
    r = http("/readyz");
    assert_int_equal(r.status, 503);
    assert_string_equal(err_code(&r), "stopping");
    resp_free(&r);
    atomic_store(&app.stopping, false);
}

static int count_occurrences(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void test_metrics(void **state) {
    (void)state;
    /* Two running jobs: one with a stored rate, one whose worker reports a live rate. */
    char a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX], p[LORAD_STORE_ID_MAX];
    create_job("stories260K.bin", good_id, NULL, a);
    create_job("stories260K.bin", good_id, NULL, b);
    create_job("stories260K.bin", good_id, NULL, p);
    move_job(p, LORAD_JOB_QUEUED, LORAD_JOB_PAUSED, NULL);
    move_job(a, LORAD_JOB_QUEUED, LORAD_JOB_RUNNING, NULL);
    move_job(b, LORAD_JOB_QUEUED, LORAD_JOB_RUNNING, NULL);
    struct lorad_store_progress pa = {.step = 3, .total_steps = 10, .epoch = 0.3, .tokens_per_s = 123.25, .eta_s = 7,
                                      .trained_tokens = 1000};
    struct lorad_store_progress pb = {.step = 1, .total_steps = 10, .epoch = 0.1, .tokens_per_s = 5, .eta_s = 70,
                                      .trained_tokens = 234};
    struct lorad_store_progress pf = {.step = 10, .total_steps = 10, .epoch = 1, .tokens_per_s = 1, .eta_s = 0,
                                      .trained_tokens = 40000};
    assert_int_equal(lorad_store_job_set_progress(store, a, &pa, NULL), 0);
    assert_int_equal(lorad_store_job_set_progress(store, b, &pb, NULL), 0);
    assert_int_equal(lorad_store_job_set_progress(store, ft_job, &pf, NULL), 0);
    app.job_live_rate = live_rate;
    app.job_live_rate_ctx = b;

    for (int round = 0; round < 2; round++) { /* registered once: a second scrape has no duplicates */
        struct resp r = http("/metrics");
        if (getenv("LORAD_TEST_VERBOSE") && round == 0) fprintf(stderr, "%s\n", r.body);
        assert_int_equal(r.status, 200);
        char line[256];
        for (int s = 0; s < LORAD_JOB_STATUS_COUNT; s++) {
            snprintf(line, sizeof line, "\nlorad_jobs{status=\"%s\"} %lld\n", lorad_job_status_name(s), (long long)tally[s]);
            if (!strstr(r.body, line)) fprintf(stderr, "missing %s in\n%s\n", line, r.body);
            assert_non_null(strstr(r.body, line));
        }
        snprintf(line, sizeof line, "\nlorad_queue_depth %lld\n", (long long)tally[LORAD_JOB_QUEUED]);
        assert_non_null(strstr(r.body, line));
        assert_non_null(strstr(r.body, "\nlorad_train_tokens_total 41234\n"));
        snprintf(line, sizeof line, "\nlorad_job_tokens_per_second{job_id=\"%s\"} 123.25\n", a);
        assert_non_null(strstr(r.body, line));
        snprintf(line, sizeof line, "\nlorad_job_tokens_per_second{job_id=\"%s\"} 999.5\n", b);
        assert_non_null(strstr(r.body, line));
        assert_int_equal(count_occurrences(r.body, "lorad_job_tokens_per_second{"), 2);
        const char *series[] = {"lorad_jobs", "lorad_queue_depth", "lorad_train_tokens_total", "lorad_job_tokens_per_second"};
        for (size_t i = 0; i < 4; i++) {
            snprintf(line, sizeof line, "# HELP %s ", series[i]);
            assert_int_equal(count_occurrences(r.body, line), 1);
            snprintf(line, sizeof line, "# TYPE %s gauge\n", series[i]);
            assert_int_equal(count_occurrences(r.body, line), 1);
        }
        resp_free(&r);
    }
    app.job_live_rate = NULL;
}

/* A page holds at most 100 files whatever limit (up to 1000) is asked for; a name cut at 255
 * bytes inside a UTF-8 character loses that character, not the upload. Runs last: it adds
 * files. */
static void test_page_cap_and_long_name(void **state) {
    (void)state;
    char *good = write_scratch("long.jsonl", GOOD);
    char name[400] = "", url_name[1200] = "";
    strcat(name, "aa"); /* 2 + 126 * 2 = 254 bytes, then the 255th is the first half of an 'é' */
    strcat(url_name, "aa");
    for (int i = 0; i < 128; i++) {
        strcat(name, "\xc3\xa9");
        strcat(url_name, "%%C3%%A9");
    }
    char fmt[1400];
    snprintf(fmt, sizeof fmt, "-H 'Content-Type: application/octet-stream' --data-binary @%%s /v1/files?filename=%s", url_name);
    struct resp r = http(fmt, good);
    assert_int_equal(r.status, 200);
    name[254] = '\0';
    assert_string_equal(jstr(r.json, "filename"), name);
    resp_free(&r);
    free(good);

    for (int i = 0; i < 100; i++) {
        char id[LORAD_STORE_ID_MAX], path[64];
        assert_int_equal(lorad_store_new_id("file-", id), 0);
        snprintf(path, sizeof path, "files/%s", id);
        struct lorad_store_file_new f = {.id = id, .filename = "x.jsonl", .purpose = "fine-tune", .bytes = 1,
                                         .sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                         .status = "processed", .path = path};
        assert_int_equal(lorad_store_file_create(store, &f, NULL, NULL), 0);
    }
    r = http("/v1/files?limit=1000");
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 100);
    assert_true(json_is_true(json_object_get(r.json, "has_more")));
    resp_free(&r);
    r = http("/v1/files?limit=1001");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

/* ---- fixture -------------------------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    state_dir = test_mkdtemp("api-handlers");
    files_dir = test_path(state_dir, "files");
    jobs_dir = test_path(state_dir, "jobs");
    uploads_dir = test_path(state_dir, "uploads");
    models_dir = test_path(state_dir, "models");
    scratch = test_path(state_dir, "scratch");
    const char *dirs[] = {jobs_dir, uploads_dir, models_dir, scratch}; /* files/ is made on first upload */
    for (size_t i = 0; i < 4; i++) assert_int_equal(mkdir(dirs[i], 0755), 0);
    char *db = test_path(state_dir, "lorad.db");
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_open(db, &(struct lorad_store_options){.flags = LORAD_STORE_RECOVER}, &store, &err), 0);
    free(db);
    app.store = store;
    app.state_dir = state_dir;
    app.models_dir = models_dir;
    app.files_dir = files_dir;
    app.jobs_dir = jobs_dir;
    atomic_store(&app.ready, true);
    assert_int_equal(lorad_api_handlers_install(), 0);
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .listen_fd = -1, .max_connections = 8,
                                         .connection_timeout_s = 10, .max_request_body = 1 << 16,
                                         .max_upload_bytes = 1 << 20, .upload_dir = uploads_dir,
                                         .max_json_depth = 32, .app = &app};
    assert_int_equal(lorad_api_server_start(&o, &srv), 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lorad_api_server_stop(srv);
    lorad_infer_free(infer); /* after the server: its connections have closed their streams */
    lorad_store_close(store);
    test_rmtree(state_dir);
    free(state_dir), free(files_dir), free(jobs_dir), free(uploads_dir), free(models_dir), free(scratch);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upload_multipart_and_raw),
        cmocka_unit_test(test_validation_report),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_get_and_content),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_malformed_ids),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_checkpoint_models),
        cmocka_unit_test(test_inference_disabled),
        cmocka_unit_test(test_inference_errors),
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_chat_completions),
        cmocka_unit_test(test_readyz),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_page_cap_and_long_name),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
