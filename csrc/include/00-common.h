#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "flow.h"
