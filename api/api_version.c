#include <microhttpd.h>
/* The libmicrohttpd version the API is linked against. */
const char *lorad_api_mhd_version(void) { return MHD_get_version(); }
