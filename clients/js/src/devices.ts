/**
 * Pushes while the app is closed: registering this device, listing and removing the user's
 * devices, muting a thread. REST calls with the user's token; never reads or sends anything else.
 */
import { ChatRestError, type Rest } from "./rest.js";
import type { DeviceRegistration, PushDevice } from "./types.js";

export async function registerDevice(rest: Rest, device: DeviceRegistration): Promise<string> {
  const body =
    device.platform === "webpush" && "toJSON" in device.subscription
      ? { ...device, subscription: device.subscription.toJSON() }
      : device;
  const answer = (await rest.call("POST", "/api/chat/devices", body)) as { data?: { id?: string } };
  const id = answer?.data?.id;
  if (typeof id !== "string") throw new ChatRestError(502, "registerDevice: no device id in the answer");
  return id;
}

export async function unregisterDevice(rest: Rest, deviceId: string): Promise<void> {
  await rest.call("DELETE", `/api/chat/devices/${encodeURIComponent(deviceId)}`);
}

export async function listDevices(rest: Rest): Promise<PushDevice[]> {
  const answer = (await rest.call("GET", "/api/chat/devices")) as { data?: { devices?: PushDevice[] } };
  return answer?.data?.devices ?? [];
}

export async function muteThread(rest: Rest, threadId: string, until: Date | string | null): Promise<string | null> {
  const value = until instanceof Date ? until.toISOString() : until;
  const answer = (await rest.call("POST", `/api/chat/threads/${encodeURIComponent(threadId)}/mute`, {
    until: value,
  })) as { data?: { muted_until?: string | null } };
  return answer?.data?.muted_until ?? null;
}
