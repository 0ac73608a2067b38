"""Talk to GenericApplications: python send.py KEY hello TEXT | KEY ping | KEY join GROUP
| KEY leave GROUP | KEY quit."""
import sys

from postage import generic_application

producer = generic_application.GenericApplicationProducer()
key, command = sys.argv[1], sys.argv[2]
if command == 'hello':
    producer.message_hello(sys.argv[3], _key=key)
elif command == 'ping':
    answer = producer.rpc_ping(_key=key, _timeout=10, _max_retry=0)
    if answer:
        value = answer.body['content']['value']
        print(f"ping answered by {value['name']} pid {value['pid']} on {value['host']}")
    else:
        print(f"ping failed: {answer.body['content']['message']}")
elif command == 'join':
    producer.message_join_group(sys.argv[3], _key=key)
elif command == 'leave':
    producer.message_leave_group(sys.argv[3], _key=key)
elif command == 'quit':
    producer.message_quit(_key=key)
