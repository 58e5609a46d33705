/* The calibration pass's hot loop: counts of floor(|x| * factor) for float32 activations, in one pass with
 * the GIL released. pytest_int8gate/calibrate.py holds the numpy path that gives the same counts; this
 * kernel is optional (built when the installing machine has a C compiler) and only makes them cheaper.
 *
 * add_counts(values, counts, lanes, factor, reach) -> None
 *   values       C-contiguous float32 buffer, every value finite with |x| * factor < reach
 *   counts       C-contiguous writable int64 buffer of the histogram's bins (added to)
 *   lanes        C-contiguous writable uint32 buffer of LANES * len(counts) zeros, left zero on return
 *   factor       the grid's bins per unit, a power of two exactly representable in float32
 *   reach        how many bins from 0 the values can reach (<= len(counts) < 2**31): only those are folded
 *                and cleared, which keeps a call on a small tensor cheap
 * A value outside [0, reach) after scaling (NaN included) is not counted and raises ValueError after the
 * pass: no write is ever out of bounds whatever the caller passes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Neighbouring values count into LANES interleaved histograms: a run of equal bins (a ReLU's zeros) does not
 * wait on one counter's previous increment. */
#define LANES 4
/* uint32 lane counters are folded into the int64 counts after at most this many values per lane. */
#define BLOCK_VALUES ((Py_ssize_t)LANES << 28)
/* Below this many values the lanes cost more to fold than they save: count straight into the int64 bins. */
#define DIRECT_BELOW 4096

static int get_buffer(PyObject *object, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) != 0) return -1;
    if (view->itemsize != itemsize || view->format == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: expected items of %zd bytes", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Whether a buffer's struct format is one item, in native byte order, of one of the type codes given (the item
 * sizes are checked apart): a big-endian int64 buffer must not be counted into as if it were native. */
static int native_format(const char *format, const char *codes) {
    if (format == NULL) return 0;
    if (format[0] == '@' || format[0] == '=' || format[0] == (PY_LITTLE_ENDIAN ? '<' : '>')) format++;
    return format[0] != '\0' && format[1] == '\0' && strchr(codes, format[0]) != NULL;
}

/* Values are scaled and converted STAGE at a time in a loop the compiler vectorises, then counted. */
#define STAGE 1024

static Py_ssize_t count_scalar(const float *x, Py_ssize_t n, int64_t *counts, Py_ssize_t reach, float factor) {
    const float limit = (float)reach;
    Py_ssize_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float scaled = fabsf(x[i]) * factor;
        /* false for NaN too: the cast is only reached for a value on the grid */
        if (scaled < limit) counts[(Py_ssize_t)scaled]++;
        else bad++;
    }
    return bad;
}

static Py_ssize_t count_block(const float *x, Py_ssize_t n, uint32_t *lanes, int64_t *counts, Py_ssize_t bins,
                              Py_ssize_t reach, float factor) {
    if (n < DIRECT_BELOW) return count_scalar(x, n, counts, reach, factor);
    const float limit = (float)reach;
    Py_ssize_t bad = 0;
    int32_t index[STAGE];
    for (Py_ssize_t start = 0; start < n; start += STAGE) {
        Py_ssize_t size = n - start < STAGE ? n - start : STAGE;
        const float *chunk = x + start;
        int32_t off_grid = 0;
        for (Py_ssize_t j = 0; j < size; j++) {
            float scaled = fabsf(chunk[j]) * factor;
            int32_t on_grid = scaled < limit; /* 0 for NaN */
            off_grid += 1 - on_grid;
            index[j] = (int32_t)(on_grid ? scaled : 0.0f);
        }
        if (off_grid != 0) { /* the rare chunk with a value off the grid: count the others one by one */
            bad += count_scalar(chunk, size, counts, reach, factor);
            continue;
        }
        Py_ssize_t j = 0;
        for (; j + LANES <= size; j += LANES)
            for (int k = 0; k < LANES; k++) lanes[(Py_ssize_t)k * bins + index[j + k]]++;
        for (; j < size; j++) counts[index[j]]++;
    }
    for (int k = 0; k < LANES; k++) {
        uint32_t *lane = lanes + (Py_ssize_t)k * bins;
        for (Py_ssize_t b = 0; b < reach; b++) counts[b] += lane[b];
        memset(lane, 0, sizeof(uint32_t) * (size_t)reach);
    }
    return bad;
}

static PyObject *add_counts(PyObject *self, PyObject *args) {
    PyObject *values_obj, *counts_obj, *lanes_obj;
    double factor;
    Py_ssize_t reach;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOdn:add_counts", &values_obj, &counts_obj, &lanes_obj, &factor, &reach))
        return NULL;
    Py_buffer values, counts, lanes;
    if (get_buffer(values_obj, &values, 0, 4, "values") != 0) return NULL;
    if (get_buffer(counts_obj, &counts, 1, 8, "counts") != 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    if (get_buffer(lanes_obj, &lanes, 1, 4, "lanes") != 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        return NULL;
    }
    Py_ssize_t n = values.len / 4, bins = counts.len / 8;
    const char *error = NULL;
    if (!native_format(values.format, "f"))
        error = "values must be float32 in native byte order";
    else if (!native_format(counts.format, "lq"))
        error = "counts must be int64 in native byte order";
    else if (!native_format(lanes.format, "IL"))
        error = "lanes must be uint32 in native byte order";
    else if (bins > INT32_MAX) /* count_block's bin indices are int32 */
        error = "counts must hold fewer than 2**31 bins";
    else if (bins < 1 || lanes.len / 4 != (Py_ssize_t)LANES * bins)
        error = "lanes must hold LANES * len(counts) counters";
    else if (reach < 0 || reach > bins)
        error = "reach must be between 0 and len(counts)";
    else if (!(factor > 0.0) || (double)(float)factor != factor)
        error = "factor must be a positive float32 value";
    Py_ssize_t bad = 0;
    if (error == NULL) {
        const float *x = (const float *)values.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t start = 0; start < n; start += BLOCK_VALUES) {
            Py_ssize_t size = n - start < BLOCK_VALUES ? n - start : BLOCK_VALUES;
            bad += count_block(x + start, size, (uint32_t *)lanes.buf, (int64_t *)counts.buf, bins, reach, (float)factor);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&lanes);
    if (error != NULL) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    if (bad != 0) {
        PyErr_Format(PyExc_ValueError, "%zd value(s) outside the histogram's grid (the others were counted)", bad);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"add_counts", add_counts, METH_VARARGS,
     "add_counts(values, counts, lanes, factor, reach): add the counts of floor(|x| * factor)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_histogram", "The calibration histogram's kernel.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__histogram(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "LANES", LANES) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
