"""cffi (ABI mode) binding of lib60870-C, the IEC 60870-5-104 stack bundled in the `c104` wheel.

Why not c104's own Python API: its server confirms a select (S/E = 1) inside its C++ layer
without asking the application, so an interlock could never refuse a select; and it sends an
activation termination after a refused execute. The lib60870 under it (MZ Automation's stack,
exported whole from `c104/_c104*.so`) lets the application answer every command itself, which
is what select-before-operate through the switching authority needs. cffi releases the GIL
around every foreign call and takes it back for callbacks, like protocols/_iec61850_ffi.py.

Only the declarations Stima uses are listed, from lib60870-C 2.3 (cs104_slave.h,
iec60870_slave.h, cs101_information_objects.h, iec60870_common.h, tls_config.h). Ownership:
every `*_create(NULL, ...)` returns an object the caller destroys; an ASDU handed to
`IMasterConnection_sendASDU` or `CS104_Slave_enqueueASDU` is copied (the caller destroys it);
an ASDU passed to a handler belongs to the library and lives only during the call.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

import cffi

CDEF = r"""
typedef struct sCS104_Slave* CS104_Slave;
typedef struct sCS104_RedundancyGroup* CS104_RedundancyGroup;
typedef struct sIMasterConnection* IMasterConnection;
typedef struct sCS101_ASDU* CS101_ASDU;
typedef struct sInformationObject* InformationObject;
typedef struct sTLSConfiguration* TLSConfiguration;

struct sCS104_APCIParameters { int k; int w; int t0; int t1; int t2; int t3; };
typedef struct sCS104_APCIParameters* CS104_APCIParameters;
struct sCS101_AppLayerParameters {
    int sizeOfTypeId; int sizeOfVSQ; int sizeOfCOT; int originatorAddress; int sizeOfCA; int sizeOfIOA;
    int maxSizeOfASDU;
};
typedef struct sCS101_AppLayerParameters* CS101_AppLayerParameters;
struct sCP56Time2a { uint8_t encodedValue[7]; };
typedef struct sCP56Time2a* CP56Time2a;
struct sBinaryCounterReading { uint8_t encodedValue[5]; };
typedef struct sBinaryCounterReading* BinaryCounterReading;

typedef bool (*CS104_ConnectionRequestHandler)(void* parameter, const char* ipAddress);
typedef void (*CS104_ConnectionEventHandler)(void* parameter, IMasterConnection connection, int event);
typedef bool (*CS101_InterrogationHandler)(void* parameter, IMasterConnection connection, CS101_ASDU asdu,
                                           uint8_t qoi);
typedef bool (*CS101_CounterInterrogationHandler)(void* parameter, IMasterConnection connection, CS101_ASDU asdu,
                                                  uint8_t qcc);
typedef bool (*CS101_ClockSynchronizationHandler)(void* parameter, IMasterConnection connection, CS101_ASDU asdu,
                                                  CP56Time2a newTime);
typedef bool (*CS101_ASDUHandler)(void* parameter, IMasterConnection connection, CS101_ASDU asdu);

/* ---- the server ---- */
CS104_Slave CS104_Slave_create(int maxLowPrioQueueSize, int maxHighPrioQueueSize);
CS104_Slave CS104_Slave_createSecure(int maxLowPrioQueueSize, int maxHighPrioQueueSize, TLSConfiguration tlsConfig);
void CS104_Slave_setLocalAddress(CS104_Slave self, const char* ipAddress);
void CS104_Slave_setLocalPort(CS104_Slave self, int tcpPort);
int CS104_Slave_getOpenConnections(CS104_Slave self);
void CS104_Slave_setMaxOpenConnections(CS104_Slave self, int maxOpenConnections);
void CS104_Slave_setServerMode(CS104_Slave self, int serverMode);
void CS104_Slave_setConnectionRequestHandler(CS104_Slave self, CS104_ConnectionRequestHandler handler, void* parameter);
void CS104_Slave_setConnectionEventHandler(CS104_Slave self, CS104_ConnectionEventHandler handler, void* parameter);
void CS104_Slave_setInterrogationHandler(CS104_Slave self, CS101_InterrogationHandler handler, void* parameter);
void CS104_Slave_setCounterInterrogationHandler(CS104_Slave self, CS101_CounterInterrogationHandler handler,
                                                void* parameter);
void CS104_Slave_setClockSyncHandler(CS104_Slave self, CS101_ClockSynchronizationHandler handler, void* parameter);
void CS104_Slave_setASDUHandler(CS104_Slave self, CS101_ASDUHandler handler, void* parameter);
CS104_APCIParameters CS104_Slave_getConnectionParameters(CS104_Slave self);
CS101_AppLayerParameters CS104_Slave_getAppLayerParameters(CS104_Slave self);
void CS104_Slave_start(CS104_Slave self);
bool CS104_Slave_isRunning(CS104_Slave self);
void CS104_Slave_stop(CS104_Slave self);
void CS104_Slave_destroy(CS104_Slave self);
void CS104_Slave_enqueueASDU(CS104_Slave self, CS101_ASDU asdu);
void CS104_Slave_addRedundancyGroup(CS104_Slave self, CS104_RedundancyGroup redundancyGroup);
CS104_RedundancyGroup CS104_RedundancyGroup_create(const char* name);
void CS104_RedundancyGroup_addAllowedClient(CS104_RedundancyGroup self, const char* ipAddress);

/* ---- one master's connection (valid only while the connection is open) ---- */
bool IMasterConnection_sendASDU(IMasterConnection self, CS101_ASDU asdu);
bool IMasterConnection_sendACT_CON(IMasterConnection self, CS101_ASDU asdu, bool negative);
bool IMasterConnection_sendACT_TERM(IMasterConnection self, CS101_ASDU asdu);
void IMasterConnection_getPeerAddress(IMasterConnection self, char* addrBuf, int addrBufSize);
void IMasterConnection_close(IMasterConnection self);

/* ---- ASDUs ---- */
CS101_ASDU CS101_ASDU_create(CS101_AppLayerParameters parameters, bool isSequence, int cot, int oa, int ca,
                             bool isTest, bool isNegative);
void CS101_ASDU_destroy(CS101_ASDU self);
bool CS101_ASDU_addInformationObject(CS101_ASDU self, InformationObject io);
int CS101_ASDU_getTypeID(CS101_ASDU self);
int CS101_ASDU_getCOT(CS101_ASDU self);
void CS101_ASDU_setCOT(CS101_ASDU self, int value);
int CS101_ASDU_getOA(CS101_ASDU self);
int CS101_ASDU_getCA(CS101_ASDU self);
bool CS101_ASDU_isTest(CS101_ASDU self);
bool CS101_ASDU_isNegative(CS101_ASDU self);
void CS101_ASDU_setNegative(CS101_ASDU self, bool value);
int CS101_ASDU_getNumberOfElements(CS101_ASDU self);
InformationObject CS101_ASDU_getElement(CS101_ASDU self, int index);   /* caller destroys */

/* ---- information objects (the caller destroys what *_create(NULL, ...) returns) ---- */
int InformationObject_getObjectAddress(InformationObject self);
void InformationObject_destroy(InformationObject self);
InformationObject SinglePointInformation_create(InformationObject self, int ioa, bool value, uint8_t quality);
InformationObject SinglePointWithCP56Time2a_create(InformationObject self, int ioa, bool value, uint8_t quality,
                                                   CP56Time2a timestamp);
InformationObject DoublePointInformation_create(InformationObject self, int ioa, int value, uint8_t quality);
InformationObject DoublePointWithCP56Time2a_create(InformationObject self, int ioa, int value, uint8_t quality,
                                                   CP56Time2a timestamp);
InformationObject MeasuredValueShort_create(InformationObject self, int ioa, float value, uint8_t quality);
InformationObject MeasuredValueShortWithCP56Time2a_create(InformationObject self, int ioa, float value,
                                                          uint8_t quality, CP56Time2a timestamp);
BinaryCounterReading BinaryCounterReading_create(BinaryCounterReading self, int32_t value, int seqNumber,
                                                 bool hasCarry, bool isAdjusted, bool isInvalid);
InformationObject IntegratedTotals_create(InformationObject self, int ioa, BinaryCounterReading value);
InformationObject IntegratedTotalsWithCP56Time2a_create(InformationObject self, int ioa, BinaryCounterReading value,
                                                        CP56Time2a timestamp);
int DoubleCommand_getState(InformationObject self);
bool DoubleCommand_isSelect(InformationObject self);
int DoubleCommand_getQU(InformationObject self);
float SetpointCommandShort_getValue(InformationObject self);
bool SetpointCommandShort_isSelect(InformationObject self);
CP56Time2a DoubleCommandWithCP56Time2a_getTimestamp(InformationObject self);
CP56Time2a SetpointCommandShortWithCP56Time2a_getTimestamp(InformationObject self);

/* ---- time ---- */
void CP56Time2a_setFromMsTimestamp(CP56Time2a self, uint64_t timestamp);
uint64_t CP56Time2a_toMsTimestamp(CP56Time2a self);
bool CP56Time2a_isInvalid(CP56Time2a self);
void CP56Time2a_setInvalid(CP56Time2a self, bool value);

/* ---- TLS (IEC 62351-3) ---- */
TLSConfiguration TLSConfiguration_create(void);
bool TLSConfiguration_setOwnCertificateFromFile(TLSConfiguration self, const char* filename);
bool TLSConfiguration_setOwnKeyFromFile(TLSConfiguration self, const char* filename, const char* keyPassword);
bool TLSConfiguration_addCACertificateFromFile(TLSConfiguration self, const char* filename);
void TLSConfiguration_setChainValidation(TLSConfiguration self, bool value);
void TLSConfiguration_setAllowOnlyKnownCertificates(TLSConfiguration self, bool value);
void TLSConfiguration_setMinTlsVersion(TLSConfiguration self, int version);
void TLSConfiguration_destroy(TLSConfiguration self);
"""

# CS104_ServerMode
MODE_SINGLE_REDUNDANCY_GROUP = 0
MODE_CONNECTION_IS_REDUNDANCY_GROUP = 1
MODE_MULTIPLE_REDUNDANCY_GROUPS = 2
# CS104_PeerConnectionEvent
CON_OPENED, CON_CLOSED, CON_ACTIVATED, CON_DEACTIVATED = 0, 1, 2, 3
# TLSConfigVersion
TLS_VERSION_1_2 = 6

ffi = cffi.FFI()
ffi.cdef(CDEF)
_lib: Any = None


def library_path() -> str:
    """The shared object of the installed `c104` wheel (it exports lib60870-C's whole API)."""
    spec = importlib.util.find_spec("c104")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the c104 package (IEC 60870-5-104, lib60870-C) is not installed: pip install c104")
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "_c104*.so")))
        if found:
            return found[0]
    raise ImportError("c104 is installed but its shared library _c104*.so was not found")


def lib() -> Any:
    """The loaded library (loaded once, on first use: importing this module does no work)."""
    global _lib
    if _lib is None:
        _lib = ffi.dlopen(library_path())
    return _lib
