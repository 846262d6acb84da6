"""cffi (ABI mode) binding of the libiec61850 shared library bundled with pyiec61850-ng.

Why not the SWIG module: its client calls hold the GIL while they wait on the network, and a
report handler plus such a call deadlocks the process. cffi releases the GIL around every
foreign call and takes it back for callbacks, so a blocking read in a worker thread never
stops the asyncio loop or libiec61850's own receive thread.

Only the declarations Stima uses are listed. Opaque handles stay opaque; every function that
returns memory the caller owns says so next to its declaration. Constants are the values of
libiec61850 1.6 (iec61850_common.h, iec61850_client.h, iec61850_cdc.h).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading
from typing import Any

import cffi

CDEF = r"""
typedef struct sIedModel IedModel;
typedef struct sLogicalDevice LogicalDevice;
typedef struct sLogicalNode LogicalNode;
typedef struct sModelNode ModelNode;
typedef struct sDataObject DataObject;
typedef struct sDataAttribute DataAttribute;
typedef struct sDataSet DataSet;
typedef struct sDataSetEntry DataSetEntry;
typedef struct sReportControlBlock ReportControlBlock;
typedef struct sMmsValue MmsValue;
typedef struct sMmsVariableSpecification MmsVariableSpecification;
typedef struct sIedServer* IedServer;
typedef struct sControlObject* ControlAction;
typedef struct sIedConnection* IedConnection;
typedef struct sControlObjectClient* ControlObjectClient;
typedef struct sClientReportControlBlock* ClientReportControlBlock;
typedef struct sClientReport* ClientReport;
typedef struct sLinkedList { void* data; struct sLinkedList* next; } *LinkedList;

typedef struct {
    int ctlNum;
    int error;
    int addCause;
} LastApplError;

uint64_t Hal_getTimeInMs(void);
char* LibIEC61850_getVersionString(void);

/* ---- dynamic server model ---- */
IedModel* IedModel_create(const char* name);
void IedModel_destroy(IedModel* model);
LogicalDevice* LogicalDevice_create(const char* name, IedModel* parent);
LogicalNode* LogicalNode_create(const char* name, LogicalDevice* parent);
DataObject* DataObject_create(const char* name, ModelNode* parent, int arrayElements);
DataObject* CDC_MV_create(const char* name, ModelNode* parent, uint32_t options, bool isIntegerNotFloat);
DataObject* CDC_CMV_create(const char* name, ModelNode* parent, uint32_t options);
DataObject* CDC_SPS_create(const char* name, ModelNode* parent, uint32_t options);
DataObject* CDC_DPS_create(const char* name, ModelNode* parent, uint32_t options);
DataObject* CDC_INS_create(const char* name, ModelNode* parent, uint32_t options);
DataObject* CDC_SPC_create(const char* name, ModelNode* parent, uint32_t options, uint32_t controlOptions);
DataObject* CDC_DPC_create(const char* name, ModelNode* parent, uint32_t options, uint32_t controlOptions);
DataSet* DataSet_create(const char* name, LogicalNode* parent);
DataSetEntry* DataSetEntry_create(DataSet* dataSet, const char* variable, int index, const char* component);
ReportControlBlock* ReportControlBlock_create(const char* name, LogicalNode* parent, char* rptId,
        bool isBuffered, char* dataSetName, uint32_t confRef, uint8_t trgOps, uint8_t options,
        uint32_t bufTm, uint32_t intgPd);
ModelNode* IedModel_getModelNodeByObjectReference(IedModel* model, const char* objectReference);

/* ---- server ---- */
typedef int (*ControlPerformCheckHandler)(ControlAction action, void* parameter, MmsValue* ctlVal,
        bool test, bool interlockCheck);
typedef int (*ControlHandler)(ControlAction action, void* parameter, MmsValue* ctlVal, bool test);

IedServer IedServer_create(IedModel* dataModel);
void IedServer_destroy(IedServer self);
void IedServer_setLocalIpAddress(IedServer self, const char* localIpAddress);
void IedServer_start(IedServer self, int tcpPort);
void IedServer_stop(IedServer self);
bool IedServer_isRunning(IedServer self);
void IedServer_lockDataModel(IedServer self);
void IedServer_unlockDataModel(IedServer self);
MmsValue* IedServer_getAttributeValue(IedServer self, DataAttribute* dataAttribute); /* borrowed */
void IedServer_updateFloatAttributeValue(IedServer self, DataAttribute* dataAttribute, float value);
void IedServer_updateInt32AttributeValue(IedServer self, DataAttribute* dataAttribute, int32_t value);
void IedServer_updateBooleanAttributeValue(IedServer self, DataAttribute* dataAttribute, bool value);
void IedServer_updateDbposValue(IedServer self, DataAttribute* dataAttribute, int value);
void IedServer_updateUTCTimeAttributeValue(IedServer self, DataAttribute* dataAttribute, uint64_t value);
void IedServer_updateQuality(IedServer self, DataAttribute* dataAttribute, uint16_t quality);
void IedServer_setControlHandler(IedServer self, DataObject* node, ControlHandler handler, void* parameter);
void IedServer_setPerformCheckHandler(IedServer self, DataObject* node, ControlPerformCheckHandler handler,
        void* parameter);
void ControlAction_setAddCause(ControlAction self, int addCause);
bool ControlAction_isSelect(ControlAction self);

/* ---- MMS values ---- */
int MmsValue_getType(const MmsValue* self);
float MmsValue_toFloat(const MmsValue* self);
double MmsValue_toDouble(const MmsValue* self);
int32_t MmsValue_toInt32(const MmsValue* self);
int64_t MmsValue_toInt64(const MmsValue* self);
uint32_t MmsValue_toUint32(const MmsValue* self);
bool MmsValue_getBoolean(const MmsValue* self);
int MmsValue_getBitStringSize(const MmsValue* self);
uint32_t MmsValue_getBitStringAsIntegerBigEndian(const MmsValue* self);
uint64_t MmsValue_getUtcTimeInMs(const MmsValue* self);
MmsValue* MmsValue_getElement(const MmsValue* array, int index);
int MmsValue_getArraySize(const MmsValue* self);
int MmsValue_getDataAccessError(const MmsValue* self);
MmsValue* MmsValue_newBoolean(bool boolean);      /* caller owns */
MmsValue* MmsValue_newFloat(float value);         /* caller owns */
MmsValue* MmsValue_newIntegerFromInt32(int32_t value); /* caller owns */
void MmsValue_delete(MmsValue* self);
MmsValue* MmsValue_decodeMmsData(uint8_t* buffer, int bufPos, int bufferLength, int* endBufPos); /* caller owns; NULL if undecodable */
uint16_t Quality_fromMmsValue(const MmsValue* mmsValue);
MmsValue* MmsVariableSpecification_getChildValue(MmsVariableSpecification* self, MmsValue* value,
        const char* childId);                     /* borrowed from value */
void MmsVariableSpecification_destroy(MmsVariableSpecification* self);
void LinkedList_destroy(LinkedList self);

/* ---- client ---- */
typedef void (*ReportCallbackFunction)(void* parameter, ClientReport report);
typedef void (*CommandTerminationHandler)(void* parameter, ControlObjectClient controlClient);

IedConnection IedConnection_create(void);
void IedConnection_destroy(IedConnection self);
void IedConnection_setConnectTimeout(IedConnection self, uint32_t timeoutInMs);
void IedConnection_setRequestTimeout(IedConnection self, uint32_t timeoutInMs);
void IedConnection_connect(IedConnection self, int* error, const char* hostname, int tcpPort);
void IedConnection_close(IedConnection self);
int IedConnection_getState(IedConnection self);
MmsValue* IedConnection_readObject(IedConnection self, int* error, const char* objectReference,
        int fc);                                  /* caller owns */
MmsVariableSpecification* IedConnection_getVariableSpecification(IedConnection self, int* error,
        const char* dataAttributeReference, int fc);   /* caller owns */
LinkedList IedConnection_getDataSetDirectory(IedConnection self, int* error, const char* dataSetReference,
        bool* isDeletable);                       /* caller owns (LinkedList_destroy) */
ClientReportControlBlock IedConnection_getRCBValues(IedConnection self, int* error, const char* rcbReference,
        ClientReportControlBlock updateRcb);      /* caller owns */
void IedConnection_setRCBValues(IedConnection self, int* error, ClientReportControlBlock rcb,
        uint32_t parametersMask, bool singleRequest);
void IedConnection_installReportHandler(IedConnection self, const char* rcbReference, const char* rptId,
        ReportCallbackFunction handler, void* handlerParameter);
void IedConnection_uninstallReportHandler(IedConnection self, const char* rcbReference);

void ClientReportControlBlock_destroy(ClientReportControlBlock self);
const char* ClientReportControlBlock_getDataSetReference(ClientReportControlBlock self);
const char* ClientReportControlBlock_getRptId(ClientReportControlBlock self);
bool ClientReportControlBlock_isBuffered(ClientReportControlBlock self);
void ClientReportControlBlock_setRptEna(ClientReportControlBlock self, bool rptEna);
void ClientReportControlBlock_setTrgOps(ClientReportControlBlock self, int trgOps);
void ClientReportControlBlock_setIntgPd(ClientReportControlBlock self, uint32_t intgPd);
void ClientReportControlBlock_setGI(ClientReportControlBlock self, bool gi);
void ClientReportControlBlock_setPurgeBuf(ClientReportControlBlock self, bool purgeBuf);
void ClientReportControlBlock_setOptFlds(ClientReportControlBlock self, int optFlds);

MmsValue* ClientReport_getDataSetValues(ClientReport self);  /* borrowed */
int ClientReport_getReasonForInclusion(ClientReport self, int elementIndex);
const char* ClientReport_getRcbReference(ClientReport self);

/* ---- discovery (browse) ---- */
LinkedList IedConnection_getLogicalDeviceList(IedConnection self, int* error);      /* caller owns */
LinkedList IedConnection_getLogicalDeviceDirectory(IedConnection self, int* error,
        const char* logicalDeviceName);           /* caller owns */
LinkedList IedConnection_getLogicalNodeDirectory(IedConnection self, int* error,
        const char* logicalNodeReference, int acsiClass);  /* caller owns */
int MmsVariableSpecification_getType(MmsVariableSpecification* self);
const char* MmsVariableSpecification_getName(MmsVariableSpecification* self);  /* borrowed */
int MmsVariableSpecification_getSize(MmsVariableSpecification* self);
MmsVariableSpecification* MmsVariableSpecification_getChildSpecificationByIndex(MmsVariableSpecification* self,
        int index);                               /* borrowed from self */
int ClientReportControlBlock_getTrgOps(ClientReportControlBlock self);
uint32_t ClientReportControlBlock_getIntgPd(ClientReportControlBlock self);
int ClientReportControlBlock_getOptFlds(ClientReportControlBlock self);
uint32_t ClientReportControlBlock_getConfRev(ClientReportControlBlock self);
uint32_t ClientReportControlBlock_getBufTm(ClientReportControlBlock self);

typedef int (*ReadAccessHandler)(LogicalDevice* ld, LogicalNode* ln, DataObject* dataObject, int fc,
        void* connection, void* parameter);
void IedServer_setReadAccessHandler(IedServer self, ReadAccessHandler handler, void* parameter);

ControlObjectClient ControlObjectClient_create(const char* objectReference, IedConnection connection);
void ControlObjectClient_destroy(ControlObjectClient self);
int ControlObjectClient_getControlModel(ControlObjectClient self);
void ControlObjectClient_setOrigin(ControlObjectClient self, const char* orIdent, int orCat);
bool ControlObjectClient_select(ControlObjectClient self);
bool ControlObjectClient_selectWithValue(ControlObjectClient self, MmsValue* ctlVal);
bool ControlObjectClient_operate(ControlObjectClient self, MmsValue* ctlVal, uint64_t operTime);
int ControlObjectClient_getLastError(ControlObjectClient self);
LastApplError ControlObjectClient_getLastApplError(ControlObjectClient self);
void ControlObjectClient_setCommandTerminationHandler(ControlObjectClient self,
        CommandTerminationHandler handler, void* handlerParameter);
"""

# FunctionalConstraint
FC = {
    "ST": 0,
    "MX": 1,
    "SP": 2,
    "SV": 3,
    "CF": 4,
    "DC": 5,
    "SG": 6,
    "SE": 7,
    "SR": 8,
    "OR": 9,
    "BL": 10,
    "EX": 11,
    "CO": 12,
}

# MmsType
MMS_ARRAY, MMS_STRUCTURE, MMS_BOOLEAN, MMS_BIT_STRING, MMS_INTEGER, MMS_UNSIGNED, MMS_FLOAT = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
)
MMS_UTC_TIME = 14
MMS_DATA_ACCESS_ERROR = 15

# IedClientError (subset)
IED_ERROR_OK = 0
IED_ERROR_NOT_CONNECTED = 1
IED_ERROR_CONNECTION_LOST = 3
IED_ERROR_TIMEOUT = 20
IED_ERRORS = {
    0: "ok",
    1: "not connected",
    2: "already connected",
    3: "connection lost",
    4: "service not supported",
    5: "connection rejected",
    6: "outstanding call limit reached",
    10: "invalid argument",
    11: "data set mismatch",
    12: "object reference invalid",
    13: "unexpected value received",
    20: "timeout",
    21: "access denied",
    22: "object does not exist",
    23: "object exists",
    24: "object access unsupported",
    25: "type inconsistent",
    26: "temporarily unavailable",
    27: "object undefined",
    28: "invalid address",
    29: "hardware fault",
    30: "type unsupported",
    31: "object attribute inconsistent",
    32: "object value invalid",
    33: "object invalidated",
    34: "malformed message",
    35: "object constraint conflict",
    98: "service not implemented",
    99: "unknown",
}
LINK_ERRORS = frozenset({1, 3, 20})
"""Errors that mean the association is gone or not answering (reconnect), not a refusal."""

# ACSIClass (LN directory)
ACSI_CLASS_DATA_OBJECT, ACSI_CLASS_DATA_SET, ACSI_CLASS_BRCB, ACSI_CLASS_URCB = 0, 1, 2, 3
MMS_OCTET_STRING, MMS_VISIBLE_STRING, MMS_STRING = 7, 8, 13

# MmsDataAccessError (server read access handler)
DATA_ACCESS_ERROR_SUCCESS, DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED = -1, 3

# IedConnectionState
IED_STATE_CONNECTED = 2

# Trigger options, report options, RCB element mask
(
    TRG_OPT_DATA_CHANGED,
    TRG_OPT_QUALITY_CHANGED,
    TRG_OPT_DATA_UPDATE,
    TRG_OPT_INTEGRITY,
    TRG_OPT_GI,
) = 1, 2, 4, 8, 16
RPT_OPT_SEQ_NUM, RPT_OPT_TIME_STAMP, RPT_OPT_REASON_FOR_INCLUSION, RPT_OPT_DATA_SET = 1, 2, 4, 8
RPT_OPT_DATA_REFERENCE, RPT_OPT_BUFFER_OVERFLOW, RPT_OPT_ENTRY_ID, RPT_OPT_CONF_REV = (
    16,
    32,
    64,
    128,
)
RCB_ELEMENT_RPT_ENA, RCB_ELEMENT_OPT_FLDS, RCB_ELEMENT_TRG_OPS = 2, 32, 256
RCB_ELEMENT_INTG_PD, RCB_ELEMENT_GI, RCB_ELEMENT_PURGE_BUF = 512, 1024, 2048

# ReasonForInclusion
REASON_NOT_INCLUDED = 0

# Control
CDC_CTL_MODEL_NONE, CDC_CTL_MODEL_DIRECT_NORMAL, CDC_CTL_MODEL_SBO_NORMAL = 0, 1, 2
CDC_CTL_MODEL_DIRECT_ENHANCED, CDC_CTL_MODEL_SBO_ENHANCED = 3, 4
CONTROL_MODEL_NAMES = {
    0: "status-only",
    1: "direct-normal",
    2: "sbo-normal",
    3: "direct-enhanced",
    4: "sbo-enhanced",
}
CONTROL_ACCEPTED = -1
CONTROL_HARDWARE_FAULT = 1
CONTROL_TEMPORARILY_UNAVAILABLE = 2
CONTROL_OBJECT_ACCESS_DENIED = 3
CONTROL_VALUE_INVALID = 11
CONTROL_RESULT_FAILED, CONTROL_RESULT_OK = 0, 1
CONTROL_ORCAT_STATION_CONTROL = 2
ADD_CAUSE_NAMES = [
    "unknown",
    "not-supported",
    "blocked-by-switching-hierarchy",
    "select-failed",
    "invalid-position",
    "position-reached",
    "parameter-change-in-execution",
    "step-limit",
    "blocked-by-mode",
    "blocked-by-process",
    "blocked-by-interlocking",
    "blocked-by-synchrocheck",
    "command-already-in-execution",
    "blocked-by-health",
    "1-of-n-control",
    "abortion-by-cancel",
    "time-limit-over",
    "abortion-by-trip",
    "object-not-selected",
    "object-already-selected",
    "no-access-authority",
    "ended-with-overshoot",
    "abortion-due-to-deviation",
    "abortion-by-communication-loss",
    "abortion-by-command",
    "none",
    "inconsistent-parameters",
    "locked-by-other-client",
]
ADD_CAUSE_BLOCKED_BY_SWITCHING_HIERARCHY = 2
ADD_CAUSE_BLOCKED_BY_INTERLOCKING = 10
ADD_CAUSE_INVALID_POSITION = 4
ADD_CAUSE_OBJECT_NOT_SELECTED = 18
LAST_APPL_ERROR_NAMES = {
    0: "no-error",
    1: "unknown",
    2: "timeout-test-not-ok",
    3: "operator-test-not-ok",
}

# Dbpos
DBPOS_INTERMEDIATE, DBPOS_OFF, DBPOS_ON, DBPOS_BAD = 0, 1, 2, 3

# Quality bits
QUALITY_VALIDITY_MASK = 0x3
QUALITY_VALIDITY_GOOD, QUALITY_VALIDITY_INVALID, QUALITY_VALIDITY_QUESTIONABLE = 0, 2, 3


def add_cause_name(code: int) -> str:
    return ADD_CAUSE_NAMES[code] if 0 <= code < len(ADD_CAUSE_NAMES) else f"add-cause-{code}"


def ied_error_name(code: int) -> str:
    return IED_ERRORS.get(code, f"error {code}")


def _library_path() -> str:
    """The libiec61850 that pyiec61850-ng ships (auditwheel puts it in pyiec61850_ng.libs)."""
    spec = importlib.util.find_spec("pyiec61850")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyiec61850-ng is not installed (it ships the libiec61850 shared library)")
    package_dir = os.path.abspath(next(iter(spec.submodule_search_locations)))
    patterns = [
        os.path.join(os.path.dirname(package_dir), "pyiec61850_ng.libs", "libiec61850*.so*"),
        os.path.join(package_dir, "libiec61850*.so*"),
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise ImportError(
        "libiec61850 shared library not found next to pyiec61850 "
        f"(looked for {', '.join(patterns)}); is pyiec61850-ng installed for this platform?"
    )


class _Library:
    """The libiec61850 functions, the shared library opened on the first one asked for.

    Importing the adapters must not open a C library nobody may use (a site without IEC 61850
    IEDs, `stima config validate`, the CLIs): the first attribute read loads it, and each
    function found is kept on this object, so later calls cost one attribute lookup as before.
    """

    def __init__(self) -> None:
        self._loaded: Any = None
        self._lock = threading.Lock()

    def _library(self) -> Any:
        with self._lock:
            if self._loaded is None:
                self._loaded = ffi.dlopen(_library_path())
            return self._loaded

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._library(), name)
        setattr(self, name, value)
        return value


# The package is only located, never imported: importing it loads the SWIG extension.
ffi = cffi.FFI()
ffi.cdef(CDEF)
lib: Any = _Library()
"""Every call into libiec61850 goes through this object (`lib.IedConnection_create(...)`)."""
