// Makes stmodels._C an importable Python module. It defines no Python functions: importing it
// loads this shared library, whose static initialisers register the torch.ops.stmodels operators.
#include <Python.h>

static struct PyModuleDef stmodels_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "Compiled kernels of stmodels (operators under torch.ops.stmodels).",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&stmodels_c_module); }
